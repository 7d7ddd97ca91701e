"""Remove secrets from text in every form they travel in.

A key read from a secret file ends in a newline, SDKs strip it, error bodies echo it URL-encoded or
JSON-escaped, and HTTP Basic auth carries it in base64: replacing the string as given misses all of
these. Nothing here imports Dagster.
"""

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
# Shorter encoded fragments would match ordinary text; a real secret's own forms are all longer.
MIN_FRAGMENT = 8


def _base64_cores(raw: bytes) -> set[str]:
    """The base64 characters that depend on the secret's bytes alone, at each of the three alignments
    it can have inside a longer base64 string (e.g. `user:key` in a Basic auth header)."""
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        core = encoded[(offset * 8 + 5) // 6 : ((offset + len(raw)) * 8) // 6]
        if len(core) >= MIN_FRAGMENT:
            cores.add(core)
    return cores


def secret_forms(secret: str) -> set[str]:
    """The secret as given and stripped, and each of those URL-encoded, JSON-escaped, base64 and
    urlsafe-base64 encoded (padded, unpadded, and as it appears inside longer base64)."""
    forms: set[str] = set()
    for value in {secret, secret.strip()}:
        if not value:
            continue
        raw = value.encode()
        escaped = json.dumps(value)[1:-1]
        forms |= {
            value,
            quote(value, safe=""),
            quote(value),
            quote_plus(value),
            escaped,
            escaped.replace("/", "\\/"),
            json.dumps(value, ensure_ascii=False)[1:-1],
        }
        for encoded in (base64.b64encode(raw).decode(), *_base64_cores(raw)):
            forms |= {encoded, encoded.rstrip("="), encoded.translate(str.maketrans("+/", "-_"))}
            forms.add(encoded.rstrip("=").translate(str.maketrans("+/", "-_")))
    # Percent-encoders differ in the case of their hex digits.
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), form) for form in forms if "%" in form}
    return {form for form in forms if form}


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every form of every secret replaced by ***."""
    forms: set[str] = set()
    for secret in secrets:
        if secret and secret.strip():
            forms |= secret_forms(secret)
    if not forms or not text:
        return text
    # Longest first, so a form that contains another is removed whole.
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.sub(pattern, MASK, text)
