"""Company mentions: case-insensitive, Unicode-aware whole-word matches of names and aliases."""

import re
import unicodedata
from dataclasses import dataclass

MENTIONS_VERSION = "mentions-1"


@dataclass(frozen=True)
class CompanyTerms:
    company_id: int
    name: str
    aliases: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class FoundMention:
    company_id: int
    first_offset: int
    count: int
    matched_text: str
    position: int


def _pattern(terms: CompanyTerms) -> re.Pattern[str]:
    # Longest first so "Acme Analytics" wins over "Acme" at the same place; \w is Unicode-aware.
    words = sorted(
        {unicodedata.normalize("NFC", t.strip()) for t in (terms.name, *terms.aliases) if t.strip()},
        key=len,
        reverse=True,
    )
    alternation = "|".join(re.escape(word) for word in words)
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


def find_mentions(text: str, companies: list[CompanyTerms]) -> list[FoundMention]:
    """Every company mentioned at least once, with its position: 1 + the number of other
    tracked companies first mentioned earlier in the text."""
    text = unicodedata.normalize("NFC", text)  # offsets refer to the NFC form of the answer
    firsts: list[tuple[int, int, str, int]] = []
    for terms in companies:
        matches = list(_pattern(terms).finditer(text))
        if matches:
            firsts.append((matches[0].start(), terms.company_id, matches[0].group(0), len(matches)))
    return [
        FoundMention(
            company_id=company_id,
            first_offset=offset,
            count=count,
            matched_text=matched,
            position=1 + sum(1 for other, *_ in firsts if other < offset),
        )
        for offset, company_id, matched, count in sorted(firsts)
    ]
