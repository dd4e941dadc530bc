"""A tiny JSON Schema validator for the schema embedded in detrun/profiler/SCHEMA.md (torch and TensorFlow profiles)."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "detrun" / "profiler" / "SCHEMA.md"

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    """Check value against the JSON Schema subset SCHEMA.md uses; raise AssertionError with the path."""
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_type_ok(value, t) for t in types), f"{where}: {value!r} is not {types}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                validate(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{where}[{i}]")


@functools.lru_cache(maxsize=1)
def documented_schema() -> dict[str, Any]:
    text = SCHEMA_DOC.read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "SCHEMA.md must hold exactly one ```json block"
    return json.loads(blocks[0])
