"""Reading YAML config files (org files, site files) into pydantic models, with errors that name fields."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigFileError(ValueError):
    """A bad file; the message names the file and each offending field."""

    kind = "config file"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}: invalid {self.kind}\n" + "\n".join(f"  - {p}" for p in problems))


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
            path += f".{part}" if path else str(part)
    return path or "(file)"


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
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(source, [f"(file): not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise error(source, [f"(file): expected a mapping with {expected}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            message = describe(item)
            if message is None:
                message = "missing required field" if item["type"] == "missing" else item["msg"]
            problems.append(f"{field_path(item['loc'])}: {message.removeprefix('Value error, ')}")
        # A value that fails every branch of a union is reported once.
        raise error(source, sorted(set(problems), key=problems.index)) from None


def read_text(path: Path, error: type[ConfigFileError]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(str(path), [f"(file): cannot read: {exc.strerror}"]) from None
