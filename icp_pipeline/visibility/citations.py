"""Citations: provider annotations plus every http(s) URL in the answer, normalised, once per run."""

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from icp_pipeline.visibility.source_categories import CATEGORY_TABLE_VERSION

# citations-2: each citation gets its source category; the category table's version is part of it.
CITATIONS_VERSION = f"citations-2/{CATEGORY_TABLE_VERSION}"

_URL = re.compile(r"https?://[^\s<>\"'`\[\]{}|\\^]+", re.IGNORECASE)
_TRAILING = ".,;:!?*_~'\""
_PAIRS = {")": "(", "]": "["}
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class FoundCitation:
    url: str
    host: str
    domain: str
    source: str  # annotation | answer_text
    cited: bool = True
    title: str | None = None


def _strip_trailing(url: str) -> str:
    while url:
        last = url[-1]
        if last in _TRAILING:
            url = url[:-1]
        elif last in _PAIRS and url.count(last) > url.count(_PAIRS[last]):
            url = url[:-1]  # ")" closing a markdown link or a parenthesis, not part of the URL
        else:
            break
    return url


def normalize_url(url: str) -> str | None:
    """Lowercase scheme and host, drop the fragment, `utm_*` parameters and default ports.
    Returns None for anything that is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    # Filter the raw query so the remaining parameters keep their exact encoding.
    query = "&".join(
        pair
        for pair in parts.query.split("&")
        if pair and not pair.split("=", 1)[0].lower().startswith("utm_")
    )
    return urlunsplit((scheme, netloc, parts.path or "/", query, ""))


def domain_of(host: str) -> str:
    return host.lower().removeprefix("www.")


def host_matches(host: str, domain: str) -> bool:
    """True when the host is the domain or a subdomain of it."""
    host, domain = domain_of(host), domain_of(domain)
    return host == domain or host.endswith("." + domain)


def urls_in_text(text: str) -> list[str]:
    return [_strip_trailing(match.group(0)) for match in _URL.finditer(text)]


def extract_citations(text: str, annotations: list[tuple[str, str | None, bool]] = ()) -> list[FoundCitation]:
    """`annotations` are (url, title, cited) from the provider; they come first and win on title."""
    found: dict[str, FoundCitation] = {}
    candidates = [(url, title, cited, "annotation") for url, title, cited in annotations]
    candidates += [(url, None, True, "answer_text") for url in urls_in_text(text)]
    for raw, title, cited, source in candidates:
        url = normalize_url(raw)
        if url is None:
            continue
        existing = found.get(url)
        if existing is not None:
            if cited and not existing.cited:  # seen as retrieved, now cited in the text
                found[url] = FoundCitation(
                    url, existing.host, existing.domain, existing.source, True, existing.title
                )
            continue
        host = urlsplit(url).hostname or ""
        found[url] = FoundCitation(url, host, domain_of(host), source, cited, title)
    return list(found.values())
