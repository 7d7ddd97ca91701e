"""JSON schemas for providers' strict structured-output modes."""

import copy
from typing import Any

from pydantic import BaseModel


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's schema with every object closed and every property required, as OpenAI's strict
    json_schema mode and Anthropic's output format expect. Optional fields stay nullable-free: our
    schemas use defaults only for lists, which the model can return empty."""
    schema = copy.deepcopy(model.model_json_schema())

    def close(node: Any) -> None:
        if isinstance(node, list):
            for value in node:
                close(value)
            return
        if not isinstance(node, dict):
            return
        node.pop("default", None)
        node.pop("title", None)
        # Length limits are not accepted by every strict mode; pydantic enforces them on our side.
        node.pop("minLength", None)
        node.pop("maxLength", None)
        if node.get("type") == "object" and "properties" in node:
            node["additionalProperties"] = False
            node["required"] = list(node["properties"])
            for value in node["properties"].values():  # property names are data, not keywords
                close(value)
        for key in ("items", "anyOf", "allOf", "oneOf", "prefixItems"):
            close(node.get(key))
        for value in node.get("$defs", {}).values():
            close(value)

    close(schema)
    return schema
