"""JSON Schema export and the breaking-change check that guards every committed contract.

``python -m schemas.compat --write`` regenerates ``schemas/jsonschema/<event_type>.json``;
it refuses to overwrite a committed schema with a breaking change. Within a major version a
change is breaking when a field disappears, changes type, or becomes required (new fields
must be optional). A breaking change needs a new ``V<N+1>`` event and topic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from schemas.envelope import event_types

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "jsonschema"


def current_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every registered event type, as generated from the models."""
    import schemas  # noqa: F401  (imports every event module, so the registry is complete)

    return {name: cls.model_json_schema() for name, cls in sorted(event_types().items())}


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/$defs/"), ref
        node = root["$defs"][ref.removeprefix("#/$defs/")]
    return node


def _types(node: dict[str, Any], root: dict[str, Any]) -> set[str]:
    """The set of JSON types a schema node admits (refs resolved, unions flattened)."""
    node = _resolve(node, root)
    if "anyOf" in node:
        out: set[str] = set()
        for option in node["anyOf"]:
            out |= _types(option, root)
        return out
    if "const" in node:
        return {f"const:{json.dumps(node['const'])}"}
    if "enum" in node:
        return {f"enum:{json.dumps(v)}" for v in node["enum"]}
    t = node.get("type")
    if isinstance(t, list):
        return set(t)
    return {t} if t else {"any"}


def breaking_changes(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """What ``new`` breaks for readers and writers of ``old``; empty when compatible.

    >>> old = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    >>> breaking_changes(old, old)
    []
    >>> breaking_changes(old, {"type": "object", "properties": {}, "required": []})
    ['a: field removed']
    """
    return _compare(old, old, new, new, path)


def _compare(o: dict[str, Any], o_root: dict[str, Any], n: dict[str, Any], n_root: dict[str, Any],
             path: str) -> list[str]:
    o, n = _resolve(o, o_root), _resolve(n, n_root)
    problems: list[str] = []
    old_types, new_types = _types(o, o_root), _types(n, n_root)
    lost = old_types - new_types
    # A value that was valid must stay valid; widening (new types) is fine.
    if lost and "any" not in new_types:
        problems.append(f"{path or '<root>'}: no longer accepts {sorted(lost)}")
    o_props, n_props = o.get("properties", {}), n.get("properties", {})
    for name, o_field in o_props.items():
        where = f"{path}.{name}" if path else name
        if name not in n_props:
            problems.append(f"{where}: field removed")
            continue
        problems += _compare(o_field, o_root, n_props[name], n_root, where)
    newly_required = set(n.get("required", [])) - set(o.get("required", []))
    for name in sorted(newly_required):
        where = f"{path}.{name}" if path else name
        problems.append(f"{where}: became required" if name in o_props else f"{where}: new required field")
    if "items" in o and "items" in n:
        problems += _compare(o["items"], o_root, n["items"], n_root, f"{path}[]")
    o_extra, n_extra = o.get("additionalProperties"), n.get("additionalProperties")
    if isinstance(o_extra, dict) and isinstance(n_extra, dict):
        problems += _compare(o_extra, o_root, n_extra, n_root, f"{path}{{}}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Check (default) or write the committed JSON Schema files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write compatible schemas to the folder")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    failed = False
    for event_type, schema in current_schemas().items():
        target = args.dir / f"{event_type}.json"
        text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        if target.exists():
            committed = json.loads(target.read_text())
            problems = breaking_changes(committed, schema)
            if problems:
                failed = True
                print(f"{event_type}: breaking change, make a new major version instead:", file=sys.stderr)
                for p in problems:
                    print(f"  - {p}", file=sys.stderr)
                continue
            if target.read_text() == text:
                continue
        if args.write:
            args.dir.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote {target}")
        else:
            failed = True
            print(f"{event_type}: {target} is missing or stale; run python -m schemas.compat --write",
                  file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
