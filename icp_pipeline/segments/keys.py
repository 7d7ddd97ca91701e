"""Readable keys: a segment partition is `site|segment`, e.g. `acme|mid-market-saas`."""

import re

_UNSAFE = re.compile(r"[^a-z0-9]+")


def slugify(name: str, max_length: int = 48) -> str:
    return _UNSAFE.sub("-", name.lower()).strip("-")[:max_length].strip("-") or "segment"


def segment_partition_key(site_id: str, segment_key: str) -> str:
    return f"{site_id}|{segment_key}"
