"""The field reference (server/manifest/FIELDS.md): every field path of `expert schema`, its possible
fates, and the test that shows each.

- `schema_paths()`: every leaf field path of the manifest's JSON Schema, in schema order,
  written with `[]` for list entries and `<key>` for the keys of free-form maps
  (`base_models[].adapters[].r`, `quality_metrics.<key>`);
- `normalise(path)`: a concrete path (`base_models[0].adapters[1].r`) written that way;
- `render(rows)`: the Markdown reference from rows `(schema path, fate, what happens, test)`.

The rows come from the tests that show them (tests/manifest/test_field_reference.py runs each row's
case through the real `validate` and checks the fate); the same test fails when the checked-in
file differs from `render`, when a schema path has no row, or when the code gives a field a
fate no row names. Regenerate with `EXPERT_WRITE_REFERENCE=1 pytest tests/manifest/test_field_reference.py`.
"""

from __future__ import annotations

import re
from typing import Any

from server.manifest.schema import json_schema

_SCALARS = {"string", "integer", "number", "boolean"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a schema node: `$ref` followed, `anyOf`/`oneOf` flattened, null dropped."""
    if "$ref" in node:
        return _resolve(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return [alt for branch in node[key] for alt in _resolve(branch, defs)]
    if node.get("type") == "null":
        return []
    return [node]


def _is_leaf(node: dict[str, Any], defs: dict[str, Any]) -> bool:
    t = node.get("type")
    if t in _SCALARS or "enum" in node or "const" in node or node == {}:
        return True
    if t == "array":
        items = _resolve(node.get("items", {}), defs)
        return any(_is_leaf(i, defs) for i in items) if items else True
    if t == "object" and "properties" not in node:
        extra = node.get("additionalProperties", True)
        return extra is True or extra == {}
    return False


def schema_paths(schema: dict[str, Any] | None = None) -> list[str]:
    schema = schema or json_schema()
    defs = schema.get("$defs", {})
    out: list[str] = []

    def walk(node: dict[str, Any], path: str, depth: int) -> None:
        if depth > 12:
            return
        for alt in _resolve(node, defs):
            if _is_leaf(alt, defs) and path not in out:
                out.append(path)
            t = alt.get("type")
            if "properties" in alt:
                for name, child in alt["properties"].items():
                    walk(child, f"{path}.{name}" if path else name, depth + 1)
            elif t == "object" and isinstance(alt.get("additionalProperties"), dict) and alt["additionalProperties"]:
                walk(alt["additionalProperties"], f"{path}.<key>", depth + 1)
            elif t == "array":
                for item in _resolve(alt.get("items", {}), defs):
                    if "properties" in item or (item.get("type") == "object" and not _is_leaf(item, defs)):
                        walk(item, f"{path}[]", depth + 1)
                    elif item.get("type") == "object" and f"{path}[].<key>" not in out:
                        out.append(f"{path}[].<key>")

    walk(schema, "", 0)
    return out


_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def normalise(path: str, schema: dict[str, Any] | None = None) -> str:
    """`base_models[0].adapters[1].r` -> `base_models[].adapters[].r`; map keys -> `<key>`."""
    schema = schema or _SCHEMA
    defs = schema.get("$defs", {})
    nodes = [schema]
    out = ""
    for m in _STEP.finditer(path):
        name, index = m.group(1), m.group(2)
        alts = [a for n in nodes for a in _resolve(n, defs)]
        if index is not None:
            out += "[]"
            nodes = [a.get("items", {}) for a in alts if a.get("type") == "array"]
            continue
        named = [a["properties"][name] for a in alts if name in a.get("properties", {})]
        if named:
            out += f".{name}" if out else name
            nodes = named
            continue
        maps = [a.get("additionalProperties") for a in alts if a.get("type") == "object" and "properties" not in a]
        out += ".<key>" if out else "<key>"
        nodes = [x if isinstance(x, dict) else {} for x in maps] or [{}]
        if all(_is_leaf(a, defs) for n in nodes for a in _resolve(n, defs) or [{}]):
            return out  # a map of scalars: the rest of the path (dots included) is the key
    return out


_SCHEMA = json_schema()


def render(rows: list[tuple[str, str, str, str]], schema: dict[str, Any] | None = None) -> str:
    """server/manifest/FIELDS.md: one section per top-level field, one row per (path, fate)."""
    paths = schema_paths(schema)
    by_path: dict[str, list[tuple[str, str, str]]] = {}
    for path, fate, what, test in rows:
        by_path.setdefault(path, []).append((fate, what, test))
    order = {"applied": 0, "checked": 1, "refused": 2}
    lines = [
        "# Manifest fields: every path, its possible fates, and the test that shows each",
        "",
        "Generated from `expert schema` and tests/manifest/test_field_reference.py (which runs every row's",
        "case through `expert validate` and fails when this file is stale, when a field has no",
        "fate or no test, or when the code gives a field a fate not listed here). Regenerate:",
        "`EXPERT_WRITE_REFERENCE=1 .venv/bin/python -m pytest tests/manifest/test_field_reference.py`.",
        "",
        "Fates: **applied** (takes effect), **checked** (validated and shown, no behaviour),",
        "**refused** (with the reason; where it changes what users get the expert is not servable).",
        "Keys starting with `_` are comments (checked) anywhere. Behavioural claims also carry",
        "`evidence` from probes on the engine at load and in `expert validate --prove`",
        "(server/experts/probes.py).",
        "",
    ]
    section = None
    for path in paths:
        top = re.split(r"[.\[]", path, maxsplit=1)[0]
        if top != section:
            section = top
            lines += ["", f"## `{top}`", "", "| field | fate | what happens | test |", "|---|---|---|---|"]
        for fate, what, test in sorted(by_path.get(path, []), key=lambda r: (order.get(r[0], 9), r[1])):
            lines.append(f"| `{path}` | {fate} | {what} | `{test}` |")
        if path not in by_path:
            lines.append(f"| `{path}` | **none** | no fate shown by a test | — |")
    return "\n".join(lines) + "\n"
