"""Stable, readable identifiers: question keys, model slugs and question-run partition keys."""

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")


def question_key(text: str) -> str:
    """A stable key from the question text, so reordering questions never renames partitions: 12 hex
    characters (48 bits) of its SHA-1, so 1,000 questions collide with odds of about 2 in a billion.
    Keys stored before (6 hex characters) are kept for their questions: see org_file.question_keys."""
    normalized = " ".join(text.lower().split())
    return "q-" + hashlib.sha1(normalized.encode()).hexdigest()[:12]


def model_slug(provider: str, model: str) -> str:
    # Dagster rejects partition keys containing "...": runs of dots become one.
    return f"{provider}-{_DOTS.sub('.', _UNSAFE.sub('-', model)).strip('-')}"


def question_run_key(org_id: str, question: str, model: str, country: str, sample_index: int = 0) -> str:
    """`acme|q-1a2b3c|openai-gpt-4o-mini|US`: one partition per org x question x model x location and
    sample. Sample 0 has the bare key, so an org asking once keeps its partitions and their history when
    it starts asking more often; sample i >= 1 adds `|s<i + 1>` (1-based, as people count samples):
    `acme|q-1a2b3c|openai-gpt-4o-mini|US|s2` is the second sample."""
    base = f"{org_id}|{question}|{model}|{country}"
    return base if sample_index == 0 else f"{base}|s{sample_index + 1}"
