"""The site file: a YAML description of a website, validated with pydantic and upserted idempotently."""

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from icp_pipeline.config_files import ConfigFileError, parse_yaml_model, read_text, visible
from icp_pipeline.db.models import Segment, Site
from icp_pipeline.limits import MAX_PAGES, MAX_SEGMENTS
from icp_pipeline.segments.keys import segment_partition_key

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class PageSpec(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://", max_length=2000), visible()]
    # Scraped text: line breaks and tabs, but no other control characters (PostgreSQL refuses NUL).
    text: Annotated[str, Field(min_length=1, max_length=50_000), visible("\n\t\r")]


class ImportedSegmentSpec(_Strict):
    id: str
    name: Annotated[str, Field(min_length=2, max_length=120), visible()]
    description: Annotated[str, Field(min_length=1, max_length=2000), visible("\n\t")]

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(
                "must be lowercase letters, digits, '-' or '_' (at most 48), e.g. mid-market-saas"
            )
        return value


class SiteSpec(_Strict):
    id: str
    name: Annotated[str, Field(min_length=1, max_length=200), visible()]
    url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2000), visible()]
    description: Annotated[str, Field(min_length=1, max_length=5000), visible("\n\t")]
    pages: Annotated[list[PageSpec], Field(max_length=MAX_PAGES)] = []
    segments: Annotated[list[ImportedSegmentSpec], Field(max_length=MAX_SEGMENTS)] = []

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("must be lowercase letters, digits, '-' or '_' (at most 48), e.g. acme")
        return value

    @model_validator(mode="after")
    def _unique_segments(self) -> "SiteSpec":
        seen: set[str] = set()
        for segment in self.segments:
            if segment.id in seen:
                raise ValueError(f"segments: duplicate segment id {segment.id!r}")
            seen.add(segment.id)
        return self


class SiteFileError(ConfigFileError):
    kind = "site file"


def parse_site_text(text: str, source: str = "<site file>") -> SiteSpec:
    return parse_yaml_model(text, source, SiteSpec, SiteFileError, "id, name, url, description")


def parse_site_file(path: Path) -> SiteSpec:
    return parse_site_text(read_text(path, SiteFileError), str(path))


def upsert_site(session: Session, spec: SiteSpec) -> dict[str, int]:
    """Make the database match the site file; imported segments missing from it are deactivated."""
    changes = {"created": 0, "updated": 0, "deactivated": 0}
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    site = session.get(Site, spec.id)
    if site is None:
        site = Site(id=spec.id, config_sha256="")
        session.add(site)
        changes["created"] += 1
    if site.config_sha256 == digest:
        return changes
    if site.config_sha256:
        changes["updated"] += 1
    site.name, site.url, site.description = spec.name, spec.url, spec.description
    site.pages = [page.model_dump() for page in spec.pages]
    site.config_sha256 = digest
    existing = {
        s.key: s
        for s in session.scalars(
            select(Segment).where(Segment.site_id == spec.id, Segment.source == "imported")
        )
    }
    for imported in spec.segments:
        row = existing.get(imported.id)
        if row is None:
            session.add(
                Segment(
                    site_id=spec.id,
                    key=imported.id,
                    partition_key=segment_partition_key(spec.id, imported.id),
                    name=imported.name,
                    description=imported.description,
                    source="imported",
                )
            )
            changes["created"] += 1
        else:
            row.name, row.description, row.active = imported.name, imported.description, True
    wanted = {s.id for s in spec.segments}
    for key, row in existing.items():
        if key not in wanted and row.active:
            row.active = False
            changes["deactivated"] += 1
    session.flush()
    return changes
