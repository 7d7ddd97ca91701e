import pytest

from icp_pipeline.visibility.mentions import CompanyTerms, FoundMention, find_mentions

ACME = CompanyTerms(1, "Acme", ("Acme Analytics",))
GLOBEX = CompanyTerms(2, "Globex", ("Globex Corporation",))
INITECH = CompanyTerms(3, "Initech")
ZURICH = CompanyTerms(4, "Zürich Labs")
MULLER = CompanyTerms(5, "Müller")
CPP = CompanyTerms(6, "C++ Tools")
AB = CompanyTerms(7, "A.B. Corp")


def _ids(found: list[FoundMention]) -> list[int]:
    return [m.company_id for m in found]


@pytest.mark.parametrize(
    ("text", "mentioned"),
    [
        ("We use Acme daily.", True),
        ("we use ACME daily", True),
        ("we use acme daily", True),
        ("Acme's dashboards", True),  # apostrophe is not a word character
        ("(Acme)", True),
        ("Acme-based", True),
        ("Acme", True),
        ("Acmeville is a town", False),
        ("SuperAcme is different", False),
        ("Acme_tools is a handle", False),
        ("Acme2 is a product", False),
        ("", False),
    ],
)
def test_whole_word_case_insensitive(text: str, mentioned: bool) -> None:
    assert (_ids(find_mentions(text, [ACME])) == [1]) is mentioned


@pytest.mark.parametrize(
    ("text", "company", "expected"),
    [
        ("ZÜRICH LABS is great", ZURICH, "ZÜRICH LABS"),
        ("zürich labs is great", ZURICH, "zürich labs"),
        ("Ask Zürich Labs.", ZURICH, "Zürich Labs"),
        ("MÜLLER wins", MULLER, "MÜLLER"),
    ],
)
def test_unicode_names_match_case_insensitively(text: str, company: CompanyTerms, expected: str) -> None:
    found = find_mentions(text, [company])
    assert len(found) == 1
    assert found[0].matched_text == expected


@pytest.mark.parametrize("text", ["Die Müllerei ist alt", "Zürich Labsä", "GroßMüller"])
def test_unicode_letters_are_word_characters(text: str) -> None:
    assert find_mentions(text, [MULLER, ZURICH]) == []


def test_alias_longer_than_name_is_one_match() -> None:
    found = find_mentions("Acme Analytics is good; Acme is cheap.", [ACME])
    assert found == [FoundMention(1, 0, 2, "Acme Analytics", 1)]


def test_counts_every_match_of_name_and_aliases() -> None:
    text = "Globex Corporation, then globex, then GLOBEX again. Globexes do not count."
    (found,) = find_mentions(text, [GLOBEX])
    assert found.count == 3
    assert found.first_offset == 0
    assert found.matched_text == "Globex Corporation"


def test_company_mentioned_only_by_alias() -> None:
    text = "Try Initech first, then Globex Corporation."
    found = find_mentions(text, [ACME, GLOBEX, INITECH])
    assert _ids(found) == [3, 2]
    globex = found[1]
    assert globex.matched_text == "Globex Corporation"
    assert globex.first_offset == text.index("Globex Corporation")
    assert globex.count == 1
    assert globex.position == 2


def test_positions_follow_first_mentions() -> None:
    text = "Initech leads. Then Acme. Initech again, then Globex, then Acme Analytics."
    found = find_mentions(text, [ACME, GLOBEX, INITECH])
    assert [(m.company_id, m.position, m.count) for m in found] == [(3, 1, 2), (1, 2, 2), (2, 3, 1)]
    assert [m.first_offset for m in found] == [0, text.index("Acme"), text.index("Globex")]


def test_position_ignores_untracked_and_unmentioned_companies() -> None:
    text = "Mixpanel and Amplitude come before Globex and then Acme."
    found = find_mentions(text, [ACME, GLOBEX, INITECH])
    assert {m.company_id: m.position for m in found} == {2: 1, 1: 2}


def test_position_counts_only_strictly_earlier_companies() -> None:
    # Two tracked companies whose first mention starts at the same offset share position 1.
    shorter = CompanyTerms(10, "Acme")
    longer = CompanyTerms(11, "Acme Cloud")
    found = find_mentions("Acme Cloud and Globex", [shorter, longer, GLOBEX])
    assert {m.company_id: m.position for m in found} == {10: 1, 11: 1, 2: 3}


def test_no_mentions() -> None:
    assert find_mentions("Nothing relevant here, just Mixpanel.", [ACME, GLOBEX, INITECH]) == []
    assert find_mentions("Acme everywhere", []) == []


@pytest.mark.parametrize(
    ("text", "expected_ids"),
    [
        ("I like C++ Tools a lot", [6]),
        ("c++ tools, cheap", [6]),
        ("C Tools is not it", []),
        ("CC++ Tools is not it", []),
        ("A.B. Corp is here", [7]),
        ("AxBx Corp is not", []),
        ("ABC Corp is not", []),
        ("See A.B. Corp and C++ Tools", [7, 6]),
    ],
)
def test_regex_special_characters_are_literal(text: str, expected_ids: list[int]) -> None:
    assert _ids(find_mentions(text, [CPP, AB])) == expected_ids


def test_blank_aliases_are_ignored() -> None:
    company = CompanyTerms(1, "Acme", ("", "   "))
    assert find_mentions("nothing here", [company]) == []
    assert _ids(find_mentions("Acme here", [company])) == [1]
