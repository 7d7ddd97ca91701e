"""One grader for every answering model; what the analytics say about it; metadata keys from names."""

from datetime import datetime

import dagster as dg

from icp_pipeline.defs.metadata import company_key, table
from icp_pipeline.terminal import inert
from icp_pipeline.visibility.analytics import (
    CompanyInfo,
    GraderUsage,
    RunFacts,
    analytics_markdown,
    compute_analytics,
)
from icp_pipeline.visibility.claims import Grader, claims_subject, grader_for, org_grader

ANSWERING = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5"), ("gemini", "gemini-2.5-flash")]
SONNET = Grader("anthropic", "claude-sonnet-4-5")


def test_the_org_grader_grades_every_answering_model() -> None:
    assert {grader_for(SONNET, provider, model) for provider, model in ANSWERING} == {SONNET}


def test_without_a_grader_each_answering_model_grades_itself() -> None:
    for provider, model in ANSWERING:
        assert grader_for(None, provider, model) == Grader(provider, model)


def test_the_org_grader_needs_both_provider_and_model() -> None:
    assert org_grader(None, None) is None
    assert org_grader("openai", None) is None
    assert org_grader("openai", "gpt-4.1") == Grader("openai", "gpt-4.1")


def test_claims_subjects_keep_self_graded_purchases_and_separate_graders() -> None:
    # Graded by the answering model: the subject every purchase had before graders, so those are reused.
    assert claims_subject(7, Grader("openai", "gpt-4o-mini"), "openai", "gpt-4o-mini") == "claims:7"
    by_sonnet = claims_subject(7, SONNET, "openai", "gpt-4o-mini")
    by_gpt41 = claims_subject(7, Grader("openai", "gpt-4.1"), "openai", "gpt-4o-mini")
    # Another grader never takes over the self-graded purchase, nor one grader another's.
    assert len({"claims:7", by_sonnet, by_gpt41}) == 3
    assert by_sonnet.startswith("claims:7:")
    # One grader, one subject per item, whatever else is asked: bought at most once.
    assert claims_subject(7, SONNET, "openai", "gpt-4o-mini") == by_sonnet
    assert claims_subject(8, SONNET, "openai", "gpt-4o-mini") != by_sonnet
    # The org's grader being the answering model is the self-graded purchase.
    assert (
        claims_subject(
            7, grader_for(Grader("openai", "gpt-4o-mini"), "openai", "gpt-4o-mini"), "openai", "gpt-4o-mini"
        )
        == "claims:7"
    )


def _payload(grader: tuple[str, str] | None, graders: list[GraderUsage] | None) -> dict:
    return compute_analytics(
        org_id="acme",
        cycle_id=1,
        generated_at=datetime(2026, 1, 1),
        run_counts={"total": 1, "completed": 1, "failed": 0},
        companies=[CompanyInfo(4, "Acme", True)],
        runs=[RunFacts(1, "openai/gpt-4o-mini", "US", positions={4: 1})],
        calls=[],
        synthetic=False,
        grader=grader,
        graders=graders,
    )


def test_the_payload_names_the_grader_and_the_graders_used() -> None:
    payload = _payload(
        ("anthropic", "claude-sonnet-4-5"), [GraderUsage("anthropic/claude-sonnet-4-5", 3, 9, False)]
    )
    assert payload["grader"] == {"provider": "anthropic", "model": "claude-sonnet-4-5"}
    assert payload["graders"] == [
        {"model": "anthropic/claude-sonnet-4-5", "runs": 3, "claims": 9, "synthetic": False}
    ]
    assert payload["mixed_graders"] is False
    assert payload["companies"][0]["company_id"] == 4
    assert payload["analytics_version"] == "analytics-4"


def test_self_graded_models_are_reported_as_mixed_graders() -> None:
    used = [GraderUsage("openai/gpt-4o-mini", 1, 2, True), GraderUsage("gemini/gemini-2.5-flash", 1, 1, True)]
    payload = _payload(None, used)
    assert payload["grader"] is None
    assert [g["model"] for g in payload["graders"]] == ["gemini/gemini-2.5-flash", "openai/gpt-4o-mini"]
    assert payload["mixed_graders"] is True
    assert (
        "graded by: gemini/gemini-2.5-flash, openai/gpt-4o-mini (each answering model"
        in analytics_markdown(payload)
    )


def test_the_markdown_footer_is_a_paragraph_after_the_table() -> None:
    lines = analytics_markdown(_payload(("openai", "gpt-4.1"), [])).splitlines()
    footer = next(i for i, line in enumerate(lines) if line.startswith("Runs:"))
    assert lines[footer - 1] == "" and lines[footer - 2].startswith("| Acme |")
    assert lines[footer + 1] == "Claims and sentiment graded by: none (no claims) (the org's grader)."
    assert lines[footer + 2] == ""  # then the evidence sections, each after a blank line


def test_snapshots_from_before_graders_print_no_grader_line() -> None:
    payload = _payload(None, [])
    del payload["graders"]
    assert "graded by" not in analytics_markdown(payload)


def test_company_keys_come_from_ids_and_a_safe_slug() -> None:
    evil = "Pipe | Corp ![c](https://evil.example/company.png)"
    assert company_key(12, evil) == "company_12_pipe_corp_c_https_evil_example_c"
    assert company_key(3, "Acme") == "company_3_acme"
    assert company_key(5, "Café Zürich") == "company_5_cafe_zurich"
    assert company_key(6, "東京") == "company_6"  # nothing readable left: the id alone
    # No `/` (Dagster's own keys use it), no control characters.
    assert company_key(7, "dagster/row_count\x1b[2J") == "company_7_dagster_row_count_2j"
    # Two names that slug alike stay apart by id.
    assert company_key(1, "ACME") != company_key(2, "acme")


def test_a_table_keeps_cells_as_data() -> None:
    value = table(
        [("name", "string", "n"), ("runs", "int", "r")], [{"name": "<b>x</b> | y", "runs": 2, "extra": 1}]
    )
    assert isinstance(value, dg.TableMetadataValue)
    assert [c.name for c in value.schema.columns] == ["name", "runs"]
    assert value.records[0].data == {"name": "<b>x</b> | y", "runs": 2}


def test_terminal_text_loses_control_characters_and_keeps_paragraphs() -> None:
    assert inert("Acme\x1b]8;;http://x\x07\u202e\nZ") == "AcmeZ"
    assert (
        inert("first\x1b[2J line\nsecond\r\n\u200bthird", keep_newlines=True) == "first line\nsecond\nthird"
    )
