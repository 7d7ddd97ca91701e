"""Asset metadata helpers shared by every domain."""

from typing import Any


def known(values: dict[str, Any]) -> dict[str, Any]:
    """Drop unknowns: a missing cost stays missing in the UI rather than showing as 0."""
    return {key: value for key, value in values.items() if value is not None}
