"""
A forced tool call as a GBNF grammar: what holds llama-server's sampling to one call of one of
the forced tools, with arguments that validate against the tool's JSON schema.

Why a grammar of our own and not llama-server's ``json_schema``: its converter lets whitespace
in at every boundary (up to 22 characters each time), and the default base model (Gemma 3
270M) fills those with tabs until ``max_tokens`` cuts the call off.  Here the JSON is compact
(no whitespace outside strings, numbers of at most 16 digits), so a call ends as soon as its
arguments do, and ``forced_tools`` finds the name and the arguments at fixed places.

One tool: the arguments object alone.  Several: ``{"name":"<tool>","arguments":{...}}``, one
alternative per tool.  Enforced: ``type`` (also a list), an object's ``properties`` in the
schema's order with each ``required`` one present (and no others), ``enum``, ``const``,
``anyOf``/``oneOf``, ``allOf`` of objects (merged), ``additionalProperties`` of an object without
``properties`` (a map: ``minProperties``/``maxProperties``, its keys' length from
``propertyNames``), arrays' ``items``/``minItems``/``maxItems``, strings'
``minLength``/``maxLength``, and ``$ref`` into the schema's own ``$defs``/``definitions``.  Not
enforced (any value of the type): numeric bounds, ``pattern``, ``format``, a map's keys being
distinct.  Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# The JSON the arguments are made of, compact.  Rule names are llama.cpp's [a-zA-Z0-9-]+.
PRIMITIVES = {
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ( string ":" value ( "," string ":" value )* )? "}"',
    "array": '"[" ( value ( "," value )* )? "]"',
    "string": '"\\"" char* "\\""',
    "char": '[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" ( ["\\\\/bfnrt] | "u" [0-9a-fA-F]{4} )',
    "integer": '"-"? ( "0" | [1-9] [0-9]{0,15} )',
    "number": 'integer ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?',
    "boolean": '"true" | "false"',
    "null": '"null"',
}
SCALARS = frozenset(("string", "integer", "number", "boolean", "null"))
_NOT_NAME = re.compile(r"[^a-zA-Z0-9]+")


def literal(text: str) -> str:
    """*text* as a GBNF string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Builder:
    """Rules made while walking one set of schemas: deduplicated by body, named by where."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = dict(PRIMITIVES)
        self._by_body: dict[str, str] = {}
        self._refs: dict[tuple[int, str], str] = {}

    def add(self, hint: str, body: str) -> str:
        known = self._by_body.get(body)
        if known is not None:
            return known
        name = self._name(hint)
        self.rules[name] = body
        self._by_body[body] = name
        return name

    def _name(self, hint: str) -> str:
        base = _NOT_NAME.sub("-", hint).strip("-").lower() or "r"
        name, n = base, 1
        while name in self.rules:
            n += 1
            name = f"{base}-{n}"
        return name

    def schema(self, schema: Any, hint: str, root: Any) -> str:
        """The rule of values valid against *schema* (*root*: where its ``$ref`` points)."""
        if not isinstance(schema, dict) or not schema:
            return "value"  # true, {} or something no schema means: anything
        if isinstance(schema.get("$ref"), str):
            return self._ref(schema["$ref"], hint, root)
        if "const" in schema:
            return self.add(hint, literal(_json(schema["const"])))
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.add(hint, " | ".join(literal(_json(v)) for v in schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                alts = [self.schema(s, f"{hint}-{i}", root) for i, s in enumerate(schema[key])]
                return self.add(hint, " | ".join(alts))
        if isinstance(schema.get("allOf"), list):
            return self.schema(_merged(schema, root), hint, root)
        kind = schema.get("type")
        if isinstance(kind, list) and kind:
            alts = [self.schema({**schema, "type": k}, f"{hint}-{k}", root) for k in kind]
            return self.add(hint, " | ".join(alts))
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(schema, hint, root)
        if kind == "array" or (kind is None and "items" in schema):
            return self._array(schema, hint, root)
        if kind == "string":
            return self._string(schema, hint)
        return kind if kind in SCALARS else "value"

    def _ref(self, ref: str, hint: str, root: Any) -> str:
        key = (id(root), ref)
        known = self._refs.get(key)
        if known is not None:
            return known  # a recursive schema refers to the rule being made
        target = _resolve(ref, root)
        if target is None:
            return "value"
        name = self._name(f"{hint}-{ref.rsplit('/', 1)[-1]}")
        self._refs[key] = name
        self.rules[name] = "value"  # reserved while its own body is made
        self.rules[name] = self.schema(target, name + "-def", root)
        return name

    def _object(self, schema: dict[str, Any], hint: str, root: Any) -> str:
        props = schema.get("properties")
        props = dict(props) if isinstance(props, dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        for name in required:
            props.setdefault(name, {})
        if not props:
            extra = schema.get("additionalProperties")
            if extra is False:
                return self.add(hint, '"{" "}"')  # no member is allowed
            if not isinstance(extra, dict) or not extra:
                return "object"
            item = self.schema(extra, f"{hint}-value", root)
            names = schema.get("propertyNames")
            key = self._string(names, f"{hint}-key") if isinstance(names, dict) else "string"
            return self.add(hint, self._repeated(f'{key} ":" {item}', schema, "Properties", "{}"))
        pairs = [
            (
                f"{literal(_json(name) + ':')} {self.schema(sub, f'{hint}-{name}', root)}",
                name in required,
            )
            for name, sub in props.items()
        ]
        return self.add(hint, f'"{{" {self._members(pairs, 0, hint)} "}}"')

    def _members(self, pairs: list[tuple[str, bool]], i: int, hint: str) -> str:
        """Members *i*… in order, none written yet: a required one is always there, an optional
        one may be left out; the commas fall between the ones written."""
        if i == len(pairs):
            return ""
        pair, required = pairs[i]
        rest = " ".join(f'"," {p}' if req else f'( "," {p} )?' for p, req in pairs[i + 1 :])
        here = f"{pair} {rest}".strip()
        if required:
            return here
        later = self._members(pairs, i + 1, hint)
        if not later:
            return f"( {here} )?"
        return self.add(f"{hint}-from-{i}", f"{here} | {later}")

    def _array(self, schema: dict[str, Any], hint: str, root: Any) -> str:
        items = schema.get("items")
        item = self.schema(items, f"{hint}-item", root) if isinstance(items, dict) else "value"
        return self.add(hint, self._repeated(item, schema, "Items", "[]"))

    @staticmethod
    def _repeated(item: str, schema: dict[str, Any], bound: str, brackets: str) -> str:
        """*item* between *brackets*, comma-separated, as many times as ``min``/``max`` + *bound*
        allow (an array's items, a map's members)."""
        opening, closing = (literal(b) for b in brackets)
        low = _count(schema.get("min" + bound)) or 0
        high = _count(schema.get("max" + bound))
        if high == 0:
            return f"{opening} {closing}"
        more = _repeat(f'"," {item}', max(low - 1, 0), None if high is None else high - 1)
        inner = f"{item} {more}"
        return f"{opening} {inner} {closing}" if low > 0 else f"{opening} ( {inner} )? {closing}"

    def _string(self, schema: dict[str, Any], hint: str) -> str:
        low = _count(schema.get("minLength")) or 0
        high = _count(schema.get("maxLength"))
        if low == 0 and high is None:
            return "string"
        return self.add(hint, f'"\\"" {_repeat("char", low, high)} "\\""')


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def _repeat(rule: str, low: int, high: int | None) -> str:
    if high is None:
        return f"( {rule} )*" if low == 0 else f"( {rule} ){{{low},}}"
    return "" if high <= 0 else f"( {rule} ){{{low},{high}}}"


def _resolve(ref: str, root: Any) -> Any:
    """A ``#/…`` JSON pointer into *root*; None where it does not lead."""
    if not ref.startswith("#"):
        return None
    node = root
    for raw in ref[1:].split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _merged(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    """``allOf`` folded into one object schema: properties and required lists joined."""
    out: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    props: dict[str, Any] = dict(out.get("properties") or {})
    required: list[str] = list(out.get("required") or [])
    for part in schema["allOf"]:
        if isinstance(part, dict) and isinstance(part.get("$ref"), str):
            part = _resolve(part["$ref"], root)
        if not isinstance(part, dict):
            continue
        props.update(part.get("properties") or {})
        required += [r for r in part.get("required") or [] if r not in required]
        for key, value in part.items():
            out.setdefault(key, value)
    out.pop("allOf", None)
    out.update(properties=props, required=required)
    out.setdefault("type", "object")
    return out


def arguments_schema(parameters: Any) -> dict[str, Any]:
    """A tool's parameters as the schema of its arguments: always an object."""
    if not isinstance(parameters, dict) or not parameters:
        return {"type": "object"}
    if "type" not in parameters and "properties" not in parameters:
        return {"type": "object", **parameters}
    return parameters


def call_grammar(tools: Mapping[str, Any]) -> str:
    """The grammar of one call of one of *tools* (name to parameters schema, at least one):
    the arguments alone for one tool, ``{"name":…,"arguments":…}`` for several."""
    build = _Builder()
    alts = []
    for i, (name, parameters) in enumerate(tools.items()):
        schema = arguments_schema(parameters)
        args = build.schema(schema, f"t{i}-args", schema)
        if len(tools) == 1:
            alts.append(args)
        else:
            head = literal('{"name":' + _json(name) + ',"arguments":')
            alts.append(f'{head} {args} "}}"')
    root = " | ".join(alts)
    return "\n".join([f"root ::= {root}", *(f"{k} ::= {v}" for k, v in build.rules.items())])
