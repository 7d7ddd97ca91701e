"""The category of a cited source: whose site it is, or what kind of site.

A citation is `owned` when its host is one of the target's domains (or a subdomain), `competitor` when
it is a tracked competitor's; otherwise the org file's `source_categories` decide, then the table
below, then two host-label rules (a `forum.`/`community.`/`discuss.` host is ugc, a `blog.`/`news.`
host is news_blog); anything else is `other`. Domains match themselves and their subdomains; the most
specific (longest) listed domain wins, so `news.ycombinator.com` (ugc) is not `ycombinator.com`.

Changing the table changes what a stored citation's category would be: bump CATEGORY_TABLE_VERSION
(it is part of citations.CITATIONS_VERSION, the run_citations asset's code_version) so Dagster shows
run_citations and what follows it as changed, and re-materialize them (no model call).

Decisions: Gartner counts as review (its Peer Insights live on gartner.com); Medium is ugc (anyone
publishes there), Substack news_blog (newsletters); GitHub and the social networks are ugc;
dictionaries, encyclopaedias, MDN and arXiv are reference. `.gov`/`.edu` are not guessed: other.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CATEGORY_TABLE_VERSION = "categories-1"

# The payload's order; `owned` and `competitor` come from the org's companies, never from the table.
CATEGORIES = ("owned", "competitor", "review", "ugc", "reference", "news_blog", "other")
# What the org file may assign: the table's categories, and `other` to take a domain out of one.
FILE_CATEGORIES = ("review", "ugc", "reference", "news_blog", "other")

DOMAIN_TABLE: dict[str, tuple[str, ...]] = {
    "review": (
        "g2.com",
        "capterra.com",
        "trustradius.com",
        "gartner.com",
        "getapp.com",
        "softwareadvice.com",
        "trustpilot.com",
        "producthunt.com",
        "peerspot.com",
        "saasworthy.com",
        "softwarereviews.com",
        "sitejabber.com",
        "glassdoor.com",
        "yelp.com",
    ),
    "ugc": (
        "reddit.com",
        "quora.com",
        "stackoverflow.com",
        "stackexchange.com",
        "superuser.com",
        "serverfault.com",
        "youtube.com",
        "youtu.be",
        "medium.com",
        "dev.to",
        "news.ycombinator.com",
        "github.com",
        "x.com",
        "twitter.com",
        "linkedin.com",
        "facebook.com",
        "tiktok.com",
        "discord.com",
    ),
    "reference": (
        "wikipedia.org",
        "wikimedia.org",
        "wikidata.org",
        "wiktionary.org",
        "britannica.com",
        "investopedia.com",
        "merriam-webster.com",
        "dictionary.com",
        "developer.mozilla.org",
        "arxiv.org",
    ),
    "news_blog": (
        "techcrunch.com",
        "forbes.com",
        "businessinsider.com",
        "theverge.com",
        "wired.com",
        "venturebeat.com",
        "zdnet.com",
        "cnet.com",
        "techradar.com",
        "pcmag.com",
        "engadget.com",
        "arstechnica.com",
        "thenextweb.com",
        "nytimes.com",
        "wsj.com",
        "bloomberg.com",
        "reuters.com",
        "bbc.com",
        "bbc.co.uk",
        "theguardian.com",
        "cnbc.com",
        "ft.com",
        "axios.com",
        "fastcompany.com",
        "inc.com",
        "entrepreneur.com",
        "hbr.org",
        "substack.com",
    ),
}

# The first label of a host that says what the site is, when no listed domain does.
_HOST_LABELS = {
    "forum": "ugc",
    "forums": "ugc",
    "community": "ugc",
    "discuss": "ugc",
    "discourse": "ugc",
    "blog": "news_blog",
    "blogs": "news_blog",
    "news": "news_blog",
}


def _bare(domain: str) -> str:
    return domain.strip().lower().rstrip(".").removeprefix("www.")


def _lookup(host: str, domains: Mapping[str, str]) -> str | None:
    """The category of the longest listed domain that the host is or is a subdomain of."""
    labels = host.split(".")
    for start in range(len(labels) - 1):  # longest suffix first; a bare TLD never matches
        category = domains.get(".".join(labels[start:]))
        if category is not None:
            return category
    return None


@dataclass(frozen=True)
class SourceClassifier:
    """One org's categories: its companies' domains, its file's additions, then the table."""

    owned: tuple[str, ...] = ()
    competitor: tuple[str, ...] = ()
    extension: Mapping[str, Iterable[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        table = {domain: category for category, domains in DOMAIN_TABLE.items() for domain in domains}
        table.update({_bare(d): category for category, domains in self.extension.items() for d in domains})
        # Companies first: a competitor hosting its reviews on its own domain is still the competitor.
        companies = {_bare(d): "competitor" for d in self.competitor}
        companies.update({_bare(d): "owned" for d in self.owned})
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_companies", companies)

    def category(self, host: str) -> str:
        host = _bare(host)
        if not host:
            return "other"
        found = _lookup(host, self._companies) or _lookup(host, self._table)  # type: ignore[attr-defined]
        if found is not None:
            return found
        return _HOST_LABELS.get(host.split(".", 1)[0], "other") if host.count(".") >= 2 else "other"


def category_order(category: str | None) -> int:
    """Payload order: CATEGORIES, then citations stored before categories existed (None)."""
    return CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES)
