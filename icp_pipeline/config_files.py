"""Reading YAML config files (org files, site files) into pydantic models, with errors that name fields.

Whatever a file holds, reading it is bounded: at most MAX_FILE_BYTES are read, YAML aliases (the
"billion laughs" expansion), nesting deeper than MAX_YAML_DEPTH, integers longer than MAX_INT_DIGITS
and duplicate keys are rejected while the YAML is composed, before anything is built from it, and every
error message is short and printable.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ValidationError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

from icp_pipeline.limits import MAX_FILE_BYTES, MAX_INT_DIGITS, MAX_YAML_DEPTH
from icp_pipeline.terminal import first_invisible, inert, shown

T = TypeVar("T", bound=BaseModel)

MAX_PROBLEMS = 20  # problems listed in one error; the rest are counted
MAX_PROBLEM_CHARS = 600


class ConfigFileError(ValueError):
    """A bad file; the message names the file and each offending field."""

    kind = "config file"

    def __init__(self, source: str, problems: list[str]) -> None:
        problems = [_bounded(p) for p in problems]
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        self.problems = problems
        super().__init__(
            f"{_bounded(source)}: invalid {self.kind}\n" + "\n".join(f"  - {p}" for p in problems)
        )


def visible(allowed: str = "") -> AfterValidator:
    """A field validator refusing control, escape, zero-width and bidi formatting characters (other
    than those in `allowed`, e.g. line breaks in a long text): names are printed in terminals."""

    def check(text: str) -> str:
        found = first_invisible(text, allowed)
        if found:
            raise ValueError(
                f"contains {found}; control, escape, zero-width and bidirectional formatting characters "
                "are not allowed"
            )
        return text

    return AfterValidator(check)


def _bounded(text: str) -> str:
    text = inert(text.replace("\n", " "))
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 3] + "..."


def _path_part(part: Any) -> str:
    return shown(part, 40) if not isinstance(part, str) or len(part) > 40 else inert(part)


def field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif (
            part in ("str", "constrained-str")
            or str(part)[:1].isupper()
            or str(part).startswith(("literal[", "function-"))
        ):
            continue  # pydantic's union-branch labels (str, QuestionSpec, ...) are noise to a reader
        else:
            path += f".{_path_part(part)}" if path else _path_part(part)
    return path or "(file)"


class _YamlRejected(Exception):
    def __init__(self, path: tuple[Any, ...], message: str) -> None:
        self.problem = f"{field_path(path)}: {message}"
        super().__init__(self.problem)


try:  # libyaml parses ten times faster; the composition (where the checks are) stays in Python
    from yaml._yaml import CParser as _Parser

    def _init_parser(loader: Any, stream: str) -> None:
        _Parser.__init__(loader, stream)

except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    def _init_parser(loader: Any, stream: str) -> None:
        Reader.__init__(loader, stream)
        Scanner.__init__(loader)
        _Parser.__init__(loader)


class _BoundedLoader(Composer, _Parser, SafeConstructor, Resolver):
    """A safe loader that tracks the field path while composing and rejects, before any value is
    built, aliases, deep nesting, oversized integers and duplicate keys. The Python Composer comes
    first in the bases so its methods (with these checks) are used over the C parser's own."""

    def __init__(self, stream: str) -> None:
        _init_parser(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._path: list[Any] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # `index` is the key node of a mapping value, an int for a sequence item, None for a key.
        if parent is not None:
            self._path.append(index.value if isinstance(index, ScalarNode) else index)
        try:
            path = tuple(part for part in self._path if part is not None)
            if self.check_event(yaml.AliasEvent):
                raise _YamlRejected(
                    path, "YAML aliases (*name) are not supported; write the value out in full"
                )
            if len(self._path) > MAX_YAML_DEPTH:
                raise _YamlRejected(path, f"nested deeper than {MAX_YAML_DEPTH} levels")
            node = super().compose_node(parent, index)
            if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_DIGITS:
                raise _YamlRejected(path, f"an integer of {len(node.value)} characters is too long")
            if isinstance(node, MappingNode):
                _reject_duplicate_keys(node, path)
            return node
        finally:
            if parent is not None:
                self._path.pop()


def _reject_duplicate_keys(node: MappingNode, path: tuple[Any, ...]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _value in node.value:
        if not isinstance(key, ScalarNode):
            continue  # a complex key fails later, in the constructor, as invalid YAML
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            raise _YamlRejected(
                (*path, key.value),
                f"duplicate key (lines {seen[(key.tag, key.value)]} and {line}); each key may appear once",
            )
        seen[(key.tag, key.value)] = line


def load_yaml(text: str) -> Any:
    """yaml.safe_load with the bounds of _BoundedLoader; raises _YamlRejected or yaml.YAMLError."""
    return _BoundedLoader(text).get_single_data()


def parse_yaml_model(
    text: str,
    source: str,
    model: type[T],
    error: type[ConfigFileError],
    expected: str,
    describe: Callable[[dict[str, Any]], str | None] = lambda _error: None,
) -> T:
    """Parse YAML text into `model`; `describe` may word a pydantic error better than its default."""
    try:
        data = load_yaml(text)
    except _YamlRejected as exc:
        raise error(source, [exc.problem]) from None
    except yaml.YAMLError as exc:
        raise error(source, [f"(file): not valid YAML: {exc}"]) from None
    except RecursionError:  # a belt to the depth limit's braces
        raise error(source, [f"(file): nested deeper than {MAX_YAML_DEPTH} levels"]) from None
    if not isinstance(data, dict):
        raise error(source, [f"(file): expected a mapping with {expected}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for item in exc.errors(include_input=True, include_url=False):
            message = describe(item)
            if message is None:
                message = "missing required field" if item["type"] == "missing" else item["msg"]
            problems.append(f"{field_path(item['loc'])}: {message.removeprefix('Value error, ')}")
        # A value that fails every branch of a union is reported once.
        raise error(source, sorted(set(problems), key=problems.index)) from None


def read_text(path: Path, error: type[ConfigFileError]) -> str:
    """The file's text: UTF-8 (a BOM is allowed), at most MAX_FILE_BYTES, read no further than that."""
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error(str(path), [f"(file): cannot read: {exc.strerror}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise error(str(path), [f"(file): larger than the limit of {MAX_FILE_BYTES:,} bytes"])
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(str(path), ["(file): UTF-16 text; save the file as UTF-8"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            str(path),
            [
                f"(file): not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                "save the file as UTF-8"
            ],
        ) from None
