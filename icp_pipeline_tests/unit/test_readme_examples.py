"""The README's org and site file examples are valid files (a newcomer copies them first)."""

import re
from pathlib import Path

from icp_pipeline.segments.site_file import parse_site_text
from icp_pipeline.visibility.org_file import parse_org_text

README = Path(__file__).parents[2] / "README.md"


def _yaml_block_after(heading: str) -> str:
    text = README.read_text()
    return re.search(re.escape(heading) + r"\s*```yaml\n(.*?)```", text, re.S).group(1)


def test_the_org_file_example_parses() -> None:
    spec = parse_org_text(_yaml_block_after("Org file (YAML):"))
    assert spec.id == "acme"
    assert len(spec.questions) == 2
    assert spec.schedule == "30 9 * * 1-5"


def test_the_site_file_example_parses() -> None:
    spec = parse_site_text(_yaml_block_after("Site file (YAML):"))
    assert spec.id == "acme"
    assert [s.id for s in spec.segments] == ["data-platform-teams"]
