"""Text from files and models made safe to print in a terminal, and the check that keeps it out of names.

A name such as `\\e]0;title\\a\\e[2J` would retitle and clear the reader's terminal; a right-to-left
override (U+202E) or a zero-width character makes printed text differ from what it says.
"""

import re
import unicodedata

# ESC-introduced sequences (CSI `ESC [ ... final`, OSC/DCS/APC/PM/SOS `ESC ] ... BEL|ESC \\`, and
# two-character escapes) and their 8-bit C1 forms, removed whole so no parameter text is left behind.
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, ...
    r"|\x1b[ -/]*[0-~]"  # other escapes
)
# Control (Cc), format (Cf: zero-width, bidi overrides, BOM...), surrogate (Cs), private use (Co),
# line and paragraph separators (Zl, Zp).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def _invisible(char: str, allowed: str) -> bool:
    return char not in allowed and unicodedata.category(char) in _INVISIBLE_CATEGORIES


def inert(text: object, keep_newlines: bool = False) -> str:
    """`text` with escape sequences, control, format (zero-width, bidi) and separator characters
    removed: safe to print. `keep_newlines` keeps line breaks and tabs (tables, multi-line output)."""
    allowed = "\n\t" if keep_newlines else ""
    return "".join(ch for ch in _ESCAPE.sub("", str(text)) if not _invisible(ch, allowed))


# Characters that make markdown of a table cell: `|` ends the cell, the rest start emphasis, code,
# links, images or HTML (`<img src=...>` would fetch an image where the report is rendered).
_MARKDOWN = re.compile(r"([\\|*_`\[\]<>~])")


def markdown_cell(text: object) -> str:
    """`text` inert (see `inert`; line breaks and runs of white space become one space) and
    backslash-escaped so it renders as itself in one markdown table cell: no markup, link, image or
    HTML tag, no `|` splitting the row."""
    return _MARKDOWN.sub(r"\\\1", " ".join(inert(text, keep_newlines=True).split()))


def first_invisible(text: str, allowed: str = "") -> str | None:
    """A description of the first control, format or separator character in `text` (other than those
    in `allowed`), e.g. "U+202E (RIGHT-TO-LEFT OVERRIDE) at position 4"; None when there is none."""
    for position, char in enumerate(text):
        if _invisible(char, allowed):
            name = unicodedata.name(char, "control character")
            return f"U+{ord(char):04X} ({name}) at position {position}"
    return None


def shown(value: object, limit: int = 60) -> str:
    """A bounded, printable repr of a file-supplied value for an error message."""
    if isinstance(value, str):
        text = repr(value if len(value) <= limit else value[:limit])
        return text if len(value) <= limit else f"{text}... ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return "a very large integer"  # repr() of a 5,000-digit int raises ValueError
    if isinstance(value, bool | int | float | type(None)):
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} digits)"
    return f"a {type(value).__name__}"
