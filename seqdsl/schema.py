"""The shape of a spec file, as pydantic models, and the mapping of pydantic's errors back to file:line:col.

A spec file is one *module* (the model) plus, optionally, modules it defines or imports::

    name: lstm
    sizes: {d: 16, h: 32}            # named integers; values may be size expressions such as "4 * h"
    inputs: {x: [B, T, d]}           # B and T stay symbolic
    params: {"W_f, W_i": [h, d]}     # several names may share one declaration
    recurrent: {state: ..., step: ...}   # a recurrent module ...
    graph: {y: "..."}                     # ... or a graph module (exactly one of the two)
    outputs: {y: h, h_n: final(h)}

Equations stay strings here; `seqdsl.expr` parses them. Nothing in this file evaluates anything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from .errors import Location, SpecError, did_you_mean
from .init import InitName
from .loader import Document

Dim = Union[int, str]
DType = Literal["float32", "int64"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TensorDecl(_Strict):
    """An input: ``x: [B, T, d]`` or ``tokens: {shape: [B, T], dtype: int64}``."""

    shape: list[Dim]
    dtype: DType = "float32"


class ParamDecl(_Strict):
    """A learnable tensor: ``W: [h, d]`` or ``E: {shape: [vocab, d], init: normal}``.

    ``init``: ``uniform`` (default, U(-1/sqrt(n), 1/sqrt(n)) with n the fan-in: the last axis of a matrix or the
    length of a vector, as nn.Linear), ``normal`` (N(0, 1), as nn.Embedding), ``zeros``, ``ones``, a number (a
    constant), ``orthogonal``, ``identity``, ``xavier_uniform`` or ``kaiming_uniform``; ``gain`` scales the last
    four; ``blocks: k`` initialises each of k stacked blocks along the first axis on its own (`seqdsl.init`).
    """

    shape: list[Dim] = Field(min_length=1)  # a scalar is [1]: backends and the fan-in of `uniform` need an axis
    init: Union[InitName, float] = "uniform"
    gain: Optional[float] = None
    blocks: Union[int, str, None] = None


class StateDecl(_Strict):
    """A recurrent state: ``h: [B, h]`` (zeros) or ``h: {shape: [B, h], init: learned}``.

    ``init`` is ``zeros``, ``learned`` (a parameter ``<state>_0`` of the state's shape without B) or the name of
    a module input holding the initial state (for example an encoder's final state).
    """

    shape: list[Dim]
    init: str = "zeros"


class Stop(_Strict):
    """End a `steps:` block early: once every sequence's `when` (an int64 step value, e.g. a token) has been
    `equals` (an id or a size name, e.g. `eos`) at some step."""

    when: str
    equals: Union[int, str]


class Recurrent(_Strict):
    """z(t) = G(h(t), z(t-1), w): an optional per-step encoder, the step, an optional per-step decoder."""

    over: list[str] | None = None
    steps: Union[int, str, None] = None  # a block with no sequence input runs this many steps
    lengths: str | None = None  # an int64 [B] input: the real length of each sequence (the rest is padding)
    stop: Stop | None = None  # with `steps:`, stop before L steps once every sequence has produced `equals`
    state: dict[str, Union[StateDecl, list[Dim]]]  # a list is expanded by RecurrentModule's validator
    encoder: dict[str, str] = Field(default_factory=dict)
    step: dict[str, str]
    decoder: dict[str, str] = Field(default_factory=dict)
    direction: Literal["forward", "reverse"] = "forward"


def _shorthand_tensor(value: Any) -> Any:
    """``[B, T, d]`` is short for ``{shape: [B, T, d]}``."""
    return {"shape": value} if isinstance(value, list) else value


class _ModuleBase(_Strict):
    name: str | None = None
    doc: str | None = None
    sizes: dict[str, Union[int, str]] = Field(default_factory=dict)
    # `Union[..., list[Dim]]` only tells editors (JSON Schema) about the shorthand; the validator expands it.
    inputs: dict[str, Union[TensorDecl, list[Dim]]]
    params: dict[str, Union[ParamDecl, list[Dim]]] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(min_length=1)  # a module that returns nothing computes nothing
    modules: dict[str, "Module"] = Field(default_factory=dict)
    imports: dict[str, str] = Field(default_factory=dict)  # Name: path.yaml[#Module] or std:path.yaml

    @field_validator("inputs", "params", mode="before")
    @classmethod
    def _tensor_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _shorthand_tensor(v) for k, v in value.items()}
        return value


class RecurrentModule(_ModuleBase):
    kind: Literal["recurrent"] = "recurrent"
    recurrent: Recurrent

    @field_validator("recurrent", mode="before")
    @classmethod
    def _state_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("state"), dict):
            value = dict(value, state={k: _shorthand_tensor(v) for k, v in value["state"].items()})
        return value


class GraphModule(_ModuleBase):
    kind: Literal["graph"] = "graph"
    graph: dict[str, str]


def _module_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "recurrent" if "recurrent" in value else "graph"
    return getattr(value, "kind", "graph")


Module = Annotated[
    Union[Annotated[RecurrentModule, Tag("recurrent")], Annotated[GraphModule, Tag("graph")]],
    Discriminator(_module_kind),
]

_ModuleBase.model_rebuild()
RecurrentModule.model_rebuild()
GraphModule.model_rebuild()


class SpecFile(BaseModel):
    """The root of a spec file: one module (the model)."""

    model_config = ConfigDict(extra="forbid")
    root: Module = Field(alias="module")


def parse_module(doc: Document) -> RecurrentModule | GraphModule:
    """Validate a loaded document against the schema; errors carry the document's locations."""
    data = dict(doc.data)
    data.pop("$schema", None)
    try:
        return SpecFile.model_validate({"module": data}).root
    except ValidationError as exc:
        # a misspelt key also makes the right one "missing": report the unknown key, with its suggestion, first
        errors = sorted(exc.errors(), key=lambda e: {"extra_forbidden": 0, "missing": 1}.get(e["type"], 2))
        raise _to_spec_error(doc, errors[0]) from None



def _to_spec_error(doc: Document, err: Any) -> SpecError:
    """Map one pydantic error to a located SpecError; drop pydantic's own routing entries from the path."""
    path = _clean_path(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden" and path:
        key = str(path[-1])
        allowed = _allowed_keys(path[:-1])
        return SpecError(
            "E0201",
            f"unknown key `{key}`",
            doc.key_loc(path),
            expected="one of " + ", ".join(f"`{k}`" for k in allowed) if allowed else None,
            hint=did_you_mean(key, allowed) or "remove it, or check the spelling against the docs",
        )
    if kind == "missing" and path:
        key = str(path[-1])
        return SpecError(
            "E0202",
            f"missing required key `{key}`",
            doc.loc(path[:-1]),
            hint=_MISSING_HINTS.get(key, f"add `{key}:` here"),
        )
    found = _describe(err.get("input"))
    expected = _EXPECTED.get(kind, err["msg"])
    hint = _SHORT_HINTS.get(str(path[-1]) if path else "", "see `seqdsl schema` for the shape of every section") \
        if kind == "too_short" else "see `seqdsl schema` for the shape of every section"
    if kind == "literal_error":
        expected = err["msg"].removeprefix("Input should be ")
        options = [o.strip(" '") for o in expected.replace(" or ", ", ").split(",")]
        hint = did_you_mean(str(err.get("input")), options) or hint
    return SpecError("E0203", f"wrong type or value for `{_dotted(path)}`", doc.loc(path),
                     expected=expected, found=found, hint=hint)


def _clean_path(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    """pydantic's loc without our wrapper key `module` and the union tags (`recurrent`/`graph`) it inserts
    after every module: at the root and after `modules.<Name>`."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if i == 0 and part == "module":
            continue
        if part in _UNION_TAGS or (isinstance(part, str) and part.startswith("list[") and out and i > 1):
            continue  # which branch of `TensorDecl | [shape]` pydantic tried
        at_module = not out or (len(out) >= 2 and out[-2] == "modules")
        if at_module and part in ("recurrent", "graph") and (i == 1 or loc[i - 2] == "modules"):
            continue
        out.append(part)
    return tuple(out)


_UNION_TAGS = {"TensorDecl", "ParamDecl", "StateDecl"}


def _allowed_keys(parent: tuple[str | int, ...]) -> list[str]:
    """The keys allowed in the mapping at ``parent`` (the section holding an unknown key)."""
    model = _SECTION_MODELS.get(_section(parent))
    if model is None:
        return sorted((set(RecurrentModule.model_fields) | set(GraphModule.model_fields)) - {"kind"})
    return sorted(model.model_fields)


def _section(path: tuple[str | int, ...]) -> str:
    """``("modules", "Cell", "recurrent", "state", "h")`` -> ``"recurrent.state"``: the section a path is in,
    without the names a user chose (of modules, inputs, parameters, states)."""
    keys: list[str] = []
    parts = list(path)
    while parts:
        part = parts.pop(0)
        if part == "modules" and parts and not keys:
            parts.pop(0)  # a module of its own: its keys start again at the top
            continue
        keys.append(str(part))
        if ".".join(keys) in _NAMED_ENTRIES and parts:
            parts.pop(0)  # the user's name of the input, parameter or state
    return ".".join(keys)


_NAMED_ENTRIES = {"inputs", "params", "recurrent.state"}
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "recurrent": Recurrent, "recurrent.stop": Stop, "recurrent.state": StateDecl, "inputs": TensorDecl,
    "params": ParamDecl,
}


_EXPECTED = {
    "model_type": "a mapping such as {shape: [B, T, d]}, or a shape list such as [B, T, d]",
    "string_type": "a string",
    "int_type": "an integer",
    "dict_type": "a mapping (key: value lines)",
    "list_type": "a list such as [B, T, d]",
    "bool_type": "true or false",
    "too_short": "at least one entry",
}

_MISSING_HINTS = {
    "inputs": "declare the module's inputs, e.g. `inputs: {x: [B, T, d]}`",
    "outputs": "name what the module returns, e.g. `outputs: {y: h}`",
    "step": "write the recurrent step as equations, e.g. `step: {h: tanh(W @ x + U @ h[t-1] + b)}`",
    "state": "declare the state, e.g. `state: {h: [B, h]}`",
    "graph": "a module needs `graph:` equations or a `recurrent:` block",
    "shape": "give the shape as a list, e.g. `[B, h]`",
}


_SHORT_HINTS = {
    "outputs": "name what the module returns, e.g. `outputs: {y: h}`",
    "shape": "a parameter has at least one axis: write a scalar as `[1]`",
}


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list {value!r}" if len(repr(value)) < 60 else "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) < 60 else "a string"
    return "nothing" if value is None else type(value).__name__


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors (`# yaml-language-server: $schema=...`).

    pydantic's schema, made precise for validators that report one error: the two kinds of module and the
    ``[shape]`` shorthands are chosen by ``if``/``then`` (on the key ``recurrent``, on being a list) instead of a
    ``oneOf``/``anyOf`` that reports a misspelt nested key as the whole section being wrong; and every property
    carries its description and examples from `seqdsl.spec_keys` (what an editor shows on hover).
    """
    from pydantic import TypeAdapter

    schema = _choose_by_if_then(TypeAdapter(Module).json_schema())
    defs = schema.setdefault("$defs", {})
    defs["Module"] = {
        "description": "A spec module: `recurrent:` (a recurrent block) or `graph:` (equations over whole tensors).",
        "if": {"type": "object", "required": ["recurrent"]},
        "then": {"$ref": "#/$defs/RecurrentModule"},
        "else": {"$ref": "#/$defs/GraphModule"},
    }
    for name, definition in defs.items():
        _describe_properties(name, definition)
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "seqdsl spec",
            "$ref": "#/$defs/Module", "$defs": dict(sorted(defs.items()))}
    return root


_MODULE_UNION = [{"$ref": "#/$defs/RecurrentModule"}, {"$ref": "#/$defs/GraphModule"}]


def _choose_by_if_then(node: Any) -> Any:
    """pydantic's unions rewritten so that a validator knows which branch is meant before it looks inside."""
    if isinstance(node, list):
        return [_choose_by_if_then(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _choose_by_if_then(v) for k, v in node.items()}
    if node.get("oneOf") == _MODULE_UNION:
        rest = {k: v for k, v in node.items() if k != "oneOf"}
        return {**rest, "$ref": "#/$defs/Module"}
    branches = node.get("anyOf")
    if not (isinstance(branches, list) and len(branches) == 2):
        return node
    refs = [b for b in branches if "$ref" in b]
    plain = [b for b in branches if "$ref" not in b]
    if len(refs) == 1 and plain[0].get("type") in ("array", "null"):  # `TensorDecl | [B, T, d]`, `Stop | None`
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return {**rest, "if": {"type": plain[0]["type"]}, "then": plain[0], "else": refs[0]}
    return node


def _describe_properties(def_name: str, definition: dict[str, Any]) -> None:
    from .spec_keys import KEYS, OWNER_PATHS

    owner = OWNER_PATHS.get(def_name)
    if owner is None:
        return
    for key, prop in definition.get("properties", {}).items():
        path = f"{owner}.{key}" if owner else key
        doc = KEYS[path]  # a KeyError here names a key that seqdsl.spec_keys does not document yet
        prop.pop("title", None)  # "Over", "Steps": the description says it better
        prop["description"] = doc.text
        if doc.examples:
            prop["examples"] = list(doc.examples)


__all__ = [
    "TensorDecl", "ParamDecl", "StateDecl", "Recurrent", "RecurrentModule", "GraphModule", "Module",
    "parse_module", "json_schema", "Location",
]
