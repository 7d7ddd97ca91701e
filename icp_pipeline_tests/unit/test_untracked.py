"""The untracked-company candidate extractor on crafted answers and claims."""

from icp_pipeline.visibility.mentions import CompanyTerms
from icp_pipeline.visibility.untracked import name_key, text_candidates, untracked_names

TERMS = [
    CompanyTerms(1, "Acme", ("Acme Analytics",), ("acme.io",)),
    CompanyTerms(2, "Globex", ("Globex Corp",), ("globex.com",)),
]

ANSWER = """Here are options in US worth a look:

1. Globex: fast setup.
2. **Mixpanel** - strong funnels ([docs](https://docs.mixpanel.com/funnels)).
3. PostHog (open source) is popular
- Amplitude Inc.: enterprise grade
- **Key Features**: autocapture, cohorts
- Best for startups: Acme Analytics Pro
* Open Source: yes
### 4. Google Analytics 4
**Pros:** free. **Cons:** sampling.
Heap vs Pendo: Heap autocaptures everything; Mixpanel versus Amplitude is closer.
- The Trade Desk: ads
- iPhone apps: use Firebase
"""


def test_candidates_from_list_items_bold_headings_and_versus() -> None:
    assert text_candidates(ANSWER) == [
        "Globex",
        "Mixpanel",
        "PostHog",
        "Amplitude Inc",
        "Google Analytics 4",
        "Heap",
        "Pendo",
        "Trade Desk",
        "iPhone",
    ]


def test_tracked_names_and_aliases_are_excluded_and_occurrences_counted() -> None:
    found = {(u.name, u.source): u.occurrences for u in untracked_names(ANSWER, [], TERMS)}
    assert ("Globex", "text") not in found
    assert found[("Mixpanel", "text")] == 2  # the list item and "Mixpanel versus"; not the URL
    assert found[("Heap", "text")] == 2
    assert found[("Amplitude Inc", "text")] == 1


def test_unmatched_claim_companies_are_untracked_once_per_key() -> None:
    found = untracked_names(
        "No list here.", ["Contoso Ltd", "contoso", "Acme Analytics", "Globex Corp", "  "], TERMS
    )
    assert [(u.name, u.name_key, u.source, u.occurrences) for u in found] == [
        ("Contoso Ltd", "contoso", "claim", 2)
    ]


def test_name_key_drops_legal_suffixes_and_case() -> None:
    assert name_key("Globex  Inc.") == name_key("globex") == "globex"
    assert name_key("Inc") == "inc"  # a name that is only a suffix keeps it
    assert name_key("Ｍｉｘｐａｎｅｌ") != ""  # NFC, not NFKC: full-width stays its own key


def test_an_answer_without_names_has_no_candidates() -> None:
    assert text_candidates("It depends on your stack; compare a few tools on a trial first.") == []
    assert untracked_names("", [], TERMS) == []
