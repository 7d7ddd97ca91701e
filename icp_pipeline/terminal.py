"""Text for the terminal from untrusted sources (org and site files, model replies)."""

import unicodedata


def inert_text(text: str) -> str:
    """A name from an org file or a model, safe to print: control and format characters (escape
    sequences, bidi overrides, ...) removed."""
    return "".join(ch for ch in str(text) if unicodedata.category(ch) not in ("Cc", "Cf"))


def inert_lines(text: str) -> str:
    """Like inert_text, keeping the line breaks of a paragraph of model text."""
    return "\n".join(inert_text(line) for line in str(text).splitlines())
