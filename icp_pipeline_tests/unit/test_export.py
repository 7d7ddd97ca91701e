"""The export's pure parts: the CSV formula escape, the flattening of a payload into company_rates rows,
and the documented schema."""

import pytest

from icp_pipeline.visibility import export


@pytest.mark.parametrize(
    "text",
    ["=1+1", "+33 1 23", "-2", "@SUM(A1)", "\tx", "\rx", "'=1", "'", "plain", "", "a=b", " =1"],
)
def test_csv_escape_is_undone_exactly_and_leaves_no_formula(text: str) -> None:
    cell = export.csv_safe(text)
    assert export.csv_unescape(cell) == text
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert (cell == text) == (not text.startswith(export.FORMULA_TRIGGERS))


def test_rate_rows_flatten_every_scope_and_tolerate_old_snapshots() -> None:
    row = {"name": "Acme", "is_target": True, "runs": 4, "mentioned_runs": 3, "cited_runs": 1}
    payload = {
        "analytics_version": "analytics-1",  # before intervals, change and stability existed
        "generated_at": "2026-11-01T09:00:00+00:00",
        "companies": [
            {**row, "mention_rate": 0.75, "change": {"mention_rate": 0.25, "p_value": 0.5}},
            {**row, "name": "Gone", "is_target": False, "mentioned_runs": 1, "mention_rate": 0.25},
        ],
        "by_model": {"openai/gpt-4o-mini": [row]},
        "by_question": {"q1": [{**row, "stability": {"combinations": 2, "repeated_combinations": 0}}]},
    }
    rows = [
        dict(zip([c.name for c in export.COMPANY_RATES.columns], r, strict=True))
        for r in export.rate_rows("acme", 3, payload, {"Acme": 11})
    ]
    assert [(r["scope"], r["scope_key"], r["company_name"], r["company_id"]) for r in rows] == [
        ("overall", None, "Acme", 11),
        ("overall", None, "Gone", None),
        ("by_model", "openai/gpt-4o-mini", "Acme", 11),
        ("by_question", "q1", "Acme", 11),
    ]
    overall = rows[0]
    assert overall["share_of_voice_denominator"] == 4  # 3 + 1 over the overall rows
    assert (overall["mention_rate_ci_low"], overall["share_of_voice"], overall["min_runs"]) == (None,) * 3
    assert (overall["change_mention_rate"], overall["change_p_value"]) == (0.25, 0.5)
    assert overall["generated_at"].isoformat() == "2026-11-01T09:00:00+00:00"
    assert rows[2]["share_of_voice_denominator"] == 3
    assert (rows[3]["stability_combinations"], rows[3]["stability_disagreement_rate"]) == (2, None)


def test_every_table_is_documented_and_has_a_producer() -> None:
    for spec in export.TABLES:
        assert spec.name in export.PRODUCERS
        names = [c.name for c in spec.columns]
        assert len(names) == len(set(names)), spec.name
        assert all(c.description for c in spec.columns)
        assert spec.schema().names == names
    document = export.schema_document("acme", "csv", [1])
    assert [t["name"] for t in document["tables"]] == [s.name for s in export.TABLES]
    assert "formula_escape" in document["csv"]
    assert "| `share_of_voice_denominator` | int64 |" in export.schema_markdown()


def test_the_docs_list_every_table_as_the_schema_says() -> None:
    """docs/export.md's Tables section is schema_markdown (regenerate it when a column changes)."""
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "export.md").read_text(encoding="utf-8")
    tables = docs.split("## Tables\n", 1)[1]
    assert tables.strip() == export.schema_markdown().replace("#### ", "### ").strip()
