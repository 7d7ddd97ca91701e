import pytest

from icp_pipeline.visibility.citations import (
    FoundCitation,
    domain_of,
    extract_citations,
    host_matches,
    normalize_url,
    urls_in_text,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTPS://Example.COM/Path/To", "https://example.com/Path/To"),
        ("https://example.com/a#section-2", "https://example.com/a"),
        (
            "https://example.com/a?utm_source=x&b=2&UTM_Medium=y&a=1&Utm_campaign=z",
            "https://example.com/a?b=2&a=1",
        ),
        ("https://example.com/a?z=1&a=2&m=3", "https://example.com/a?z=1&a=2&m=3"),
        ("https://example.com/a?utm_source=x", "https://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("https://example.com:80/a", "https://example.com:80/a"),
        ("http://example.com:443/a", "http://example.com:443/a"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com?x=1", "https://example.com/?x=1"),
        ("  https://example.com/a  ", "https://example.com/a"),
        ("https://example.com./a", "https://example.com/a"),
    ],
)
def test_normalize_url(raw: str, expected: str) -> None:
    assert normalize_url(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "ftp://example.com/a",
        "mailto:x@example.com",
        "example.com/a",
        "https://",
        "",
        "javascript:alert(1)",
        "https://example.com:99999/",
    ],
)
def test_normalize_url_rejects_non_http(raw: str) -> None:
    assert normalize_url(raw) is None


def test_normalize_url_is_idempotent() -> None:
    once = normalize_url("HTTPS://WWW.Example.com:443/P?utm_x=1&q=a#f")
    assert once == "https://www.example.com/P?q=a"
    assert normalize_url(once) == once


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("https://[2001:db8::1]/docs", "https://[2001:db8::1]/docs"),
    ],
)
def test_normalize_url_keeps_ipv6_brackets(raw: str, expected: str) -> None:
    # An IPv6 literal host must stay in brackets, or the result is not a valid URL.
    assert normalize_url(raw) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("See [the docs](https://a.com/b) now", ["https://a.com/b"]),
        ("Bare https://a.com/b and http://c.org", ["https://a.com/b", "http://c.org"]),
        ("Ends with https://a.com/b.", ["https://a.com/b"]),
        (
            "List https://a.com/b, https://c.com/d; https://e.com/f: https://g.com/h! https://i.com/j?",
            ["https://a.com/b", "https://c.com/d", "https://e.com/f", "https://g.com/h", "https://i.com/j"],
        ),
        ("Weird https://a.com/b?!.", ["https://a.com/b"]),
        ("Wiki https://en.wikipedia.org/wiki/Foo_(bar) is good", ["https://en.wikipedia.org/wiki/Foo_(bar)"]),
        ("Wiki https://en.wikipedia.org/wiki/Foo_(bar).", ["https://en.wikipedia.org/wiki/Foo_(bar)"]),
        ("[w](https://en.wikipedia.org/wiki/Foo_(bar))", ["https://en.wikipedia.org/wiki/Foo_(bar)"]),
        ("(see https://a.com/x)", ["https://a.com/x"]),
        ("(see https://a.com/x).", ["https://a.com/x"]),
        ("Query https://a.com/x?q=1&r=2 kept", ["https://a.com/x?q=1&r=2"]),
        ("no urls here, just ftp://a.com and www.b.com", []),
        ("<https://a.com/x>", ["https://a.com/x"]),
        ("HTTPS://A.COM/X", ["HTTPS://A.COM/X"]),
    ],
)
def test_urls_in_text(text: str, expected: list[str]) -> None:
    assert urls_in_text(text) == expected


def test_extract_citations_dedupes_variants_and_annotations_come_first() -> None:
    text = (
        "Read https://www.acme.io/pricing?utm_source=chat#plans and "
        "[pricing](https://WWW.ACME.IO/pricing) and https://globex.com/about."
    )
    annotations = [
        ("https://www.acme.io/pricing?utm_medium=x", "Acme pricing", True),
        ("https://docs.initech.com/start", None, True),
    ]
    found = extract_citations(text, annotations)
    assert found == [
        FoundCitation(
            "https://www.acme.io/pricing", "www.acme.io", "acme.io", "annotation", True, "Acme pricing"
        ),
        FoundCitation(
            "https://docs.initech.com/start", "docs.initech.com", "docs.initech.com", "annotation", True, None
        ),
        FoundCitation("https://globex.com/about", "globex.com", "globex.com", "answer_text", True, None),
    ]


def test_extract_citations_text_only() -> None:
    found = extract_citations("See https://a.com/x and again https://a.com/x#top and https://b.com.")
    assert [(c.url, c.source, c.cited) for c in found] == [
        ("https://a.com/x", "answer_text", True),
        ("https://b.com/", "answer_text", True),
    ]


def test_retrieved_annotation_becomes_cited_when_in_text() -> None:
    annotations = [
        ("https://acme.io/a", "Retrieved A", False),
        ("https://globex.com/b", "Retrieved B", False),
    ]
    found = extract_citations("Only A is cited: https://acme.io/a?utm_source=z", annotations)
    by_url = {c.url: c for c in found}
    assert by_url["https://acme.io/a"] == FoundCitation(
        "https://acme.io/a", "acme.io", "acme.io", "annotation", True, "Retrieved A"
    )
    assert by_url["https://globex.com/b"].cited is False
    assert [c.url for c in found] == ["https://acme.io/a", "https://globex.com/b"]


def test_first_annotation_wins_on_title() -> None:
    found = extract_citations("", [("https://a.com/x", "First", True), ("https://a.com/x#y", "Second", True)])
    assert len(found) == 1
    assert found[0].title == "First"


def test_non_http_annotations_are_dropped() -> None:
    assert extract_citations("", [("ftp://a.com/x", "t", True), ("not a url", None, True)]) == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.acme.io", "acme.io"),
        ("WWW.Acme.IO", "acme.io"),
        ("docs.acme.io", "docs.acme.io"),
        ("wwwacme.io", "wwwacme.io"),
    ],
)
def test_domain_of(host: str, expected: str) -> None:
    assert domain_of(host) == expected


@pytest.mark.parametrize(
    ("host", "domain", "expected"),
    [
        ("acme.io", "acme.io", True),
        ("www.acme.io", "acme.io", True),
        ("docs.acme.io", "acme.io", True),
        ("a.b.acme.io", "acme.io", True),
        ("DOCS.ACME.IO", "acme.io", True),
        ("acme.io", "www.acme.io", True),
        ("notacme.io", "acme.io", False),
        ("acme.io.evil.com", "acme.io", False),
        ("acme.com", "acme.io", False),
        ("io", "acme.io", False),
    ],
)
def test_host_matches(host: str, domain: str, expected: bool) -> None:
    assert host_matches(host, domain) is expected
