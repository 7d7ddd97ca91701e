"""Companies an answer names that the org does not track: a deterministic candidate extractor over the
answer text (no model call) and the claims' unmatched companies.

Candidates are the capitalised names (one to four words) that stand where assistants put products:
the head of a list item (`1. Mixpanel: ...`, `- **PostHog** - ...`), a bold span, a markdown heading,
and either side of `X vs Y`. Generic words (a stop list: "Pros", "Key Features", "Open Source"...)
are dropped, and so is any name in which a tracked company's name or alias matches as a whole word
(mentions.find_mentions, the matching the mention rates use). Bump UNTRACKED_VERSION when any rule
changes: it is part of the competitive_metrics asset's code_version (the step that runs it).
"""

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from icp_pipeline.visibility.citations import urls_in_text
from icp_pipeline.visibility.mentions import CompanyTerms, find_mentions

UNTRACKED_VERSION = "untracked-1"
MAX_NAME_WORDS = 4
MAX_NAME_CHARS = 60

# A word of a name: starts with a letter or digit, may hold the joiners brands use (Monday.com, C++,
# AT&T, Rock'n'Roll). Capitalisation is checked after the match (Unicode-aware).
_WORD = r"[^\W_][\w'&+.\-]*"
_NAME = rf"{_WORD}(?:[ \t]{_WORD}){{0,{MAX_NAME_WORDS - 1}}}"
_LIST_ITEM = re.compile(
    rf"^[ \t]*(?:[-*+\u2022]|\d{{1,3}}[.)])[ \t]+(?:\*\*|__)?(?P<name>{_NAME})(?:\*\*|__)?[ \t]*(?=[:(\u2013\u2014,]|[ \t]-[ \t]|$)",
    re.MULTILINE,
)
_BOLD = re.compile(r"(?:\*\*|__)(?P<name>[^*_\n]{1,80}?)(?:\*\*|__)")
_HEADING = re.compile(
    rf"^#{{1,6}}[ \t]+(?:\d{{1,3}}[.)][ \t]*)?(?P<name>{_NAME})[ \t]*:?[ \t]*$", re.MULTILINE
)
_VERSUS = re.compile(rf"(?P<a>{_NAME})[ \t]+(?:vs\.?|versus)[ \t]+(?P<b>{_NAME})")

# Words that make a heading or a bold span generic: a name made only of them is not a company.
_STOP_TEXT = """
    a an the and or of for to in on with by at from as vs versus is are be it its this that these those
    if but also more most other others here there we you i our your their my all any each every some
    pros cons pricing price prices cost costs budget features feature key best top overview summary
    conclusion conclusions recommendation recommendations note notes tip tips why how what when where
    which who option options alternative alternatives free paid plan plans tier tiers ease use usage
    integration integrations support setup set up verdict bottom line final thoughts considerations
    consideration strengths weaknesses limitations drawbacks benefits advantages disadvantages case
    cases ideal good great better open source self-hosted hosted cloud enterprise startup startups
    small medium large teams team business businesses analytics tool tools platform platforms product
    products software solution solutions service services data warehouse warehouses sql api apis saas
    ai ml yes no step steps example examples important quick comparison table option-by-option
    performance security privacy compliance gdpr scalability flexibility customization reporting
    dashboards dashboard tracking events event funnels funnel retention cohorts users user customers
    customer marketing sales growth engineering engineers developers developer trial trials review
    reviews rating ratings community documentation docs learning curve value money overall winner
    choice choices recommended popular leading main additional disclaimer
    synthetic answer answers question questions us eu uk usa de fr global region regions
    """
# A first word that makes the span a phrase, not a name ("Best for startups", "Why it matters").
_LEADING_TEXT = """
    best top why how what when where which who pros cons key note if for ideal good great free paid
    bottom final step example consider choose use try look here there these those this that our your
    my most more less many some all each every both either neither not no yes
    """
# Legal suffixes dropped from the key so "Globex Inc." and "Globex" are one company.
_LEGAL_TEXT = "inc inc. ltd ltd. llc gmbh corp corp. corporation co co. plc ag sa s.a. bv"
# Lowercase words a company name may hold ("Bank of America", "Procter & Gamble").
_JOINERS = frozenset({"of", "and", "&", "de", "la", "du", "von", "van", "der"})
# Kept as text for reading; frozensets of their words.
STOP_WORDS = frozenset(_STOP_TEXT.split())
LEADING_STOP = frozenset(_LEADING_TEXT.split())
_LEGAL_SUFFIXES = frozenset(_LEGAL_TEXT.split())


@dataclass(frozen=True)
class UntrackedName:
    name: str  # as first written
    name_key: str
    source: str  # text | claim
    occurrences: int


def name_key(name: str) -> str:
    """The normalised name: NFC, casefolded, single spaces, trailing legal suffix dropped."""
    words = unicodedata.normalize("NFC", name).casefold().split()
    while len(words) > 1 and words[-1].rstrip(",") in _LEGAL_SUFFIXES:
        words.pop()
    return " ".join(words).strip(" .,:;")[:200]


def _clean(raw: str) -> str | None:
    """The candidate as a name, or None when it is generic or not capitalised. The name ends before
    its first lowercase word other than a joiner ("Amplitude is a ..." is Amplitude)."""
    words = " ".join(raw.split()).strip(" .,:;!?-\u2013\u2014").split()
    if words and words[0].casefold() == "the":
        words = words[1:]
    for index, word in enumerate(words):
        if not (word[0].isupper() or word[0].isdigit() or word in _JOINERS) and index:
            words = words[:index]
            break
    while words and words[-1] in _JOINERS:
        words.pop()
    name = " ".join(words).strip(" .,:;!?-\u2013\u2014")
    words = name.split()
    if not words or len(words) > MAX_NAME_WORDS or len(name) > MAX_NAME_CHARS or len(name) < 2:
        return None
    first = words[0]
    if not first[0].isalpha() or not (first[0].isupper() or any(ch.isupper() for ch in first[1:])):
        return None  # "iPhone"-style names pass on an inner capital; "pricing" does not
    keys = [w.casefold().strip(".,:;") for w in words]
    if keys[0] in LEADING_STOP or all(k in STOP_WORDS for k in keys):
        return None
    return name


def text_candidates(text: str) -> list[str]:
    """Every candidate name in the answer, in order of first appearance, once each."""
    text = unicodedata.normalize("NFC", text)
    raw: list[tuple[int, str]] = []
    for pattern in (_LIST_ITEM, _BOLD, _HEADING):
        raw += [(m.start("name"), m.group("name")) for m in pattern.finditer(text)]
    for match in _VERSUS.finditer(text):
        raw += [(match.start("a"), match.group("a")), (match.start("b"), match.group("b"))]
    names: dict[str, str] = {}
    for _, candidate in sorted(raw):
        cleaned = _clean(candidate)
        if cleaned is not None:
            names.setdefault(name_key(cleaned), cleaned)
    return list(names.values())


def _tracked(name: str, terms: list[CompanyTerms]) -> bool:
    return bool(find_mentions(name, terms))


def _occurrences(name: str, text: str) -> int:
    pattern = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE)
    return max(1, len(pattern.findall(text)))


def untracked_names(
    answer: str, claim_companies: Iterable[str], terms: list[CompanyTerms]
) -> list[UntrackedName]:
    """The run's untracked companies: text candidates (occurrences = whole-word, case-insensitive
    matches in the answer) and the claims' companies no tracked name matches (occurrences = claims)."""
    answer = unicodedata.normalize("NFC", answer)
    prose = answer
    for url in urls_in_text(answer):  # a name inside a URL (docs.mixpanel.com) is no mention
        prose = prose.replace(url, " ")
    found: dict[tuple[str, str], UntrackedName] = {}
    for name in text_candidates(answer):
        if not _tracked(name, terms):
            key = name_key(name)
            found[(key, "text")] = UntrackedName(name, key, "text", _occurrences(name, prose))
    for company in claim_companies:
        name = " ".join(unicodedata.normalize("NFC", company).split())[:200]
        key = name_key(name)
        if not key or _tracked(name, terms):
            continue
        seen = found.get((key, "claim"))
        found[(key, "claim")] = UntrackedName(
            seen.name if seen else name, key, "claim", (seen.occurrences if seen else 0) + 1
        )
    return list(found.values())


def match_company(name: str, terms: list[CompanyTerms]) -> int | None:
    """The tracked company a claim names exactly (its name or an alias, case-insensitively)."""
    wanted = name.strip().casefold()
    for t in terms:
        if wanted in {n.casefold() for n in (t.name, *t.aliases)}:
            return t.company_id
    return None
