"""Asset metadata helpers shared by every domain.

Model text and names from org or site files are untrusted: they reach the UI as text, JSON or table
cells, which Dagster shows as they are, never as markdown (which would render their links and fetch
their images)."""

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

ROW_COUNT = "dagster/row_count"
_SLUG_MAX = 32


def known(values: dict[str, Any]) -> dict[str, Any]:
    """Drop unknowns: a missing cost stays missing in the UI rather than showing as 0."""
    return {key: value for key, value in values.items() if value is not None}


def text(value: str | None, empty: str = "(empty)") -> dg.MetadataValue:
    """Untrusted text (a model's answer, a file-supplied name) as inert text."""
    return dg.MetadataValue.text(value or empty)


def company_key(company_id: int, name: str) -> str:
    """A metadata key prefix for one company: `company_<id>_<slug>`. The id keeps it unique and
    stable (a company keeps its row, and so its id, as long as its name is in the org file); the
    slug, lowercase ASCII letters, digits and `_` only, makes it readable. The name itself is never a
    key: it is untrusted (markup, control characters, `/`, a collision with another key) and two
    names can slug alike."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")[:_SLUG_MAX].rstrip("_")
    return f"company_{company_id}_{slug}" if slug else f"company_{company_id}"


def table(
    columns: Iterable[tuple[str, str, str]], rows: Iterable[Mapping[str, Any]]
) -> dg.TableMetadataValue:
    """A table of (name, type, description) columns; every cell is data, shown as it is."""
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name, type_, description) for name, type_, description in columns]
    )
    names = [column.name for column in schema.columns]
    return dg.MetadataValue.table(
        records=[dg.TableRecord({name: row.get(name) for name in names}) for row in rows], schema=schema
    )
