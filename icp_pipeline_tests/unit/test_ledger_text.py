"""Any text a provider returns can be stored, and the exact text is kept (issue 9, item 6)."""

import pytest

from icp_pipeline.db.models import ModelCall
from icp_pipeline.ledger import exact_output_text, purchase_subject, storable_text


@pytest.mark.parametrize(
    "text",
    [
        "Acme \ud800 is great",
        "NUL \x00 inside",
        "a pair split \ud83d and \ude00 apart",
        "already escaped \\ud800 text and a real \udfff",
    ],
)
def test_unstorable_characters_are_escaped_and_the_exact_text_is_kept(text: str) -> None:
    safe, exact = storable_text(text)
    safe.encode("utf-8")  # what SQLite's encoder and PostgreSQL's text need
    assert "\x00" not in safe
    assert exact is not None
    call = ModelCall(output_text=safe, exact_text=exact)
    assert exact_output_text(call) == text


def test_storable_text_is_left_alone() -> None:
    assert storable_text("Acme 🚀 café") == ("Acme 🚀 café", None)
    assert storable_text(None) == (None, None)
    assert exact_output_text(ModelCall(output_text="plain")) == "plain"


def test_subjects_fit_the_claims_table_and_name_what_is_bought() -> None:
    assert purchase_subject("answer", 12) == "answer:12"
    long = purchase_subject("segments", "s" * 64, "openai", "m", "p" * 10_000, "run-" + "x" * 120)
    assert long.startswith("segments:" + "s" * 64 + ":") and len(long) <= 200
    assert long != purchase_subject("segments", "s" * 64, "openai", "m", "p" * 10_000, "")
