"""Each source category from crafted citation hosts, the org file's extension and its errors."""

import pytest
import yaml

from icp_pipeline.visibility.citations import CITATIONS_VERSION
from icp_pipeline.visibility.org_file import OrgFileError, config_sha256, parse_org_text
from icp_pipeline.visibility.source_categories import (
    CATEGORY_TABLE_VERSION,
    DOMAIN_TABLE,
    FILE_CATEGORIES,
    SourceClassifier,
)
from icp_pipeline_tests.conftest import example_org_data

ACME = SourceClassifier(owned=("acme.io",), competitor=("globex.com", "initech.com"))


@pytest.mark.parametrize(
    ("host", "category"),
    [
        ("acme.io", "owned"),
        ("www.acme.io", "owned"),
        ("docs.acme.io", "owned"),  # subdomains are the domain's
        ("globex.com", "competitor"),
        ("blog.initech.com", "competitor"),  # a competitor's blog is the competitor, not news_blog
        ("www.g2.com", "review"),
        ("capterra.com", "review"),
        ("www.trustradius.com", "review"),
        ("gartner.com", "review"),
        ("old.reddit.com", "ugc"),
        ("quora.com", "ugc"),
        ("stackoverflow.com", "ugc"),
        ("www.youtube.com", "ugc"),
        ("medium.com", "ugc"),
        ("forum.example.org", "ugc"),  # host-label rule
        ("community.example.com", "ugc"),
        ("en.wikipedia.org", "reference"),
        ("britannica.com", "reference"),
        ("techcrunch.com", "news_blog"),
        ("www.forbes.com", "news_blog"),
        ("blog.example.com", "news_blog"),  # host-label rule
        ("news.ycombinator.com", "ugc"),  # the longest listed domain wins
        ("example.com", "other"),
        ("acme.io.evil.example", "other"),  # a suffix match, never a substring one
        ("notacme.io", "other"),
        ("blog.com", "other"),  # the label rule needs a subdomain
        ("", "other"),
    ],
)
def test_each_category(host: str, category: str) -> None:
    assert ACME.category(host) == category


def test_the_org_file_extends_and_overrides_the_table() -> None:
    classifier = SourceClassifier(
        owned=("acme.io",),
        extension={"review": ["example-reviews.com"], "other": ["medium.com"], "news_blog": ["acme.io"]},
    )
    assert classifier.category("www.example-reviews.com") == "review"
    assert classifier.category("medium.com") == "other"  # taken out of the table's ugc
    assert classifier.category("acme.io") == "owned"  # the companies come first
    assert classifier.category("reddit.com") == "ugc"


def test_the_table_is_versioned_and_lists_each_domain_once() -> None:
    assert CATEGORY_TABLE_VERSION in CITATIONS_VERSION and len(CITATIONS_VERSION) <= 32
    domains = [d for listed in DOMAIN_TABLE.values() for d in listed]
    assert len(domains) == len(set(domains))
    assert set(DOMAIN_TABLE) <= set(FILE_CATEGORIES)


def _org(source_categories: object) -> dict:
    data = example_org_data()
    data["source_categories"] = source_categories
    return data


def test_org_file_source_categories_are_parsed() -> None:
    spec = parse_org_text(
        yaml.safe_dump(_org({"review": ["WWW.Example-Reviews.com"], "other": ["medium.com"]}))
    )
    assert spec.source_categories.mapping() == {"review": ["example-reviews.com"], "other": ["medium.com"]}
    # Files without it keep their digest; with it, it is part of the digest.
    plain = parse_org_text(yaml.safe_dump(example_org_data()))
    assert config_sha256(spec) != config_sha256(plain)
    assert config_sha256(parse_org_text(yaml.safe_dump(_org({})))) == config_sha256(plain)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"owned": ["x.com"]}, "source_categories.owned: unknown category 'owned'"),
        ({"reviews": ["x.com"]}, "source_categories.reviews: unknown category 'reviews'"),
        ({"review": ["not a domain"]}, "source_categories.review: 'not a domain' is not a bare domain"),
        (
            {"review": ["x.com"], "ugc": ["X.com"]},
            "source_categories: x.com is listed under both review and ugc",
        ),
        (["x.com"], "source_categories"),
    ],
)
def test_org_file_source_categories_errors_name_the_field(value: object, expected: str) -> None:
    with pytest.raises(OrgFileError) as error:
        parse_org_text(yaml.safe_dump(_org(value)))
    assert expected in str(error.value)
