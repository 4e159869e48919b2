"""Load a YAML spec into plain Python data, remembering where every key and value came from.

PyYAML only composes a node tree here (pure-Python parser; nothing is ever constructed), and this module
turns the nodes into dicts/lists/scalars under its own, predictable rules: YAML-1.2-core booleans, nulls
and numbers; ``yes``/``no``/``on``/``off`` stay strings; ambiguous numbers (``010``, ``0x1F``) and any
non-standard tag are errors; aliases are allowed but bounded.
"""

from __future__ import annotations

import hashlib
import math
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Union

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent, StreamEndEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from .errors import Location, SpecError, did_you_mean
from .naming import normalize

# Codes E0101-E0120 are documented in seqdsl/codes.py.

# A spec and the files it imports, together: bytes and YAML nodes (each file's own aliases expanded: MAX_NODES
# again). With seqdsl.budget's limits they keep any spec decided within 2 s of CPU (tests/test_budgets.py).
MAX_SPEC_BYTES = 500_000
MAX_NODES = 15_000
MAX_DEPTH = 64
MAX_INT = 10**18

PathT = tuple[Union[str, int], ...]

_IMPLICIT = "seqdsl:implicit"  # what our resolver returns: "no explicit tag was written"
_Y = "tag:yaml.org,2002:"
_STD_TAGS = {_Y + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}
_NULLS = {"", "~", "null", "Null", "NULL"}
_TRUE, _FALSE = {"true", "True", "TRUE"}, {"false", "False", "FALSE"}
_INT = re.compile(r"[-+]?[0-9]+")
_AMBIGUOUS = re.compile(r"[-+]?(0[0-9]+|0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9]+(_[0-9]+)+)")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF, _NAN = re.compile(r"[-+]?\.(inf|Inf|INF)"), re.compile(r"\.(nan|NaN|NAN)")
_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # the line breaks PyYAML counts
_PREFIX = re.compile(r"(?:[&!]\S*(?:\s|#[^\n\r\x85\u2028\u2029]*)*)*")  # `&anchor !tag # comment` before a value
_NODE_KIND = {MappingNode: "a mapping", SequenceNode: "a list", ScalarNode: "a scalar"}
_EMPTY_HINT = "a spec is a YAML mapping, e.g. `sizes: {d: 16}`"
_LINE_MOVERS = "\n\r\x85\u2028\u2029\ufeff"  # what `Reader.forward` counts other than as a column
_MOVES_LINE = re.compile(f"[{_LINE_MOVERS}]")
_BAD_CHAR = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _dotted(path: PathT) -> str:
    """``("inputs", "x", 1)`` -> ``"inputs.x[1]"``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


class _Alias:
    """An alias (``*name``) in the composed tree: its own marks plus the anchored node it refers to."""

    def __init__(self, name: str, target: Node, start: yaml.Mark, end: yaml.Mark) -> None:
        self.name, self.target, self.start_mark, self.end_mark = name, target, start, end


class _Locator:
    """Turns node marks and string indices into `Location`s."""

    def __init__(self, file: str, source: str) -> None:
        self.file, self.source = file, source
        breaks = list(_BREAK.finditer(source))
        self.starts = [0] + [m.end() for m in breaks]
        self.ends = [m.start() for m in breaks] + [len(source)]  # each line's end, so that no lookup scans a line

    def span(self, start: int, end: int, path: PathT) -> Location:
        """The location of ``source[start:end]``, underlined up to the end of its first line."""
        line = bisect_right(self.starts, start)
        line_end = self.ends[line - 1]
        length = max(1, min(end, line_end) - start)
        return Location(self.file, line, start - self.starts[line - 1] + 1, _dotted(path), length)

    def value_start(self, node: Node) -> int:
        """Index of the node's first character, past any ``&anchor`` / ``!tag`` written before it."""
        if isinstance(node, ScalarNode) and node.value == "" and node.style is None:
            return node.start_mark.index
        return _PREFIX.match(self.source, node.start_mark.index).end()  # type: ignore[union-attr]

    def of(self, node: Node | _Alias, path: PathT) -> Location:
        if isinstance(node, _Alias):
            return self.span(node.start_mark.index, node.end_mark.index, path)
        start = self.value_start(node)
        return self.span(start, node.end_mark.index if isinstance(node, ScalarNode) else start + 1, path)

    def tag(self, node: Node, path: PathT) -> Location:
        """Where the node's ``!tag`` is written."""
        start = self.source.find("!", node.start_mark.index, max(self.value_start(node), node.start_mark.index + 1))
        if start < 0:
            return self.of(node, path)
        return self.span(start, re.compile(r"\S*").match(self.source, start).end(), path)  # type: ignore[union-attr]

    def col_offset(self, node: Node | _Alias) -> int:
        """0 plain / 1 quoted when the source holds the value verbatim from loc().col on; else -1."""
        if not isinstance(node, ScalarNode) or node.style not in (None, "'", '"'):
            return -1
        off = 0 if node.style is None else 1
        start = self.value_start(node) + off
        return off if self.source[start : start + len(node.value)] == node.value else -1


@dataclass
class Document:
    """A loaded spec: plain ``data`` plus the locations of every key and value in ``source``."""

    data: Any
    file: str
    source: str
    _values: dict[PathT, Node | _Alias] = field(default_factory=dict, repr=False)
    _keys: dict[PathT, Node | _Alias] = field(default_factory=dict, repr=False)
    sha256: str = ""  # of the bytes read (the text, UTF-8 encoded, when given as a string): build provenance
    size: int = 0  # those bytes
    nodes: int = 0  # YAML nodes in the text (aliases not expanded)

    def __post_init__(self) -> None:
        self._locator = _Locator(self.file, self.source)
        # a module inlined many times asks for the same places again
        self._locs: dict[PathT, Location] = {}
        self._key_locs: dict[PathT, Location] = {}

    def loc(self, path: PathT) -> Location:
        """Where the value at ``path`` starts (or its nearest existing ancestor); ``.path`` names ``path``."""
        path = tuple(path)
        loc = self._locs.get(path)
        if loc is None:
            loc = self._locs[path] = self._loc(path)
        return loc

    def _loc(self, path: PathT) -> Location:
        found = path
        while found and found not in self._values:
            found = found[:-1]
        if found not in self._values:
            return Location(self.file, 1, 1, _dotted(path))
        return self._locator.of(self._values[found], found).at_path(_dotted(path))

    def key_loc(self, path: PathT) -> Location:
        """Where the mapping key of ``path`` is written (falls back to `loc`)."""
        path = tuple(path)
        if path not in self._keys:
            return self.loc(path)
        loc = self._key_locs.get(path)
        if loc is None:
            loc = self._key_locs[path] = self._locator.of(self._keys[path], path)
        return loc

    def value_col_offset(self, path: PathT) -> int:
        """0 (plain) or 1 (quoted) so that ``loc(path).col + offset + i`` is the file column of the
        value's i-th character; -1 when there is no exact mapping (block scalars, escapes, folded
        lines, aliases, collections, unknown paths)."""
        node = self._values.get(tuple(path))
        return -1 if node is None else self._locator.col_offset(node)


class _Composer(Reader, Scanner, Parser, Composer, BaseResolver):
    """PyYAML's pure-Python composer, with node/depth limits, alias marks kept and no implicit tags."""

    def __init__(self, text: str, file: str, max_nodes: int = MAX_NODES) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        BaseResolver.__init__(self)
        self.file, self.depth, self.count, self.max_nodes = file, 0, 0, max_nodes

    def loc(self, mark: yaml.Mark) -> Location:
        return Location(self.file, mark.line + 1, mark.column + 1)

    def fail(self, code: str, msg: str, mark: yaml.Mark, **kw: Any) -> NoReturn:
        raise SpecError(code, msg, self.loc(mark), **kw)

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        return _IMPLICIT

    def forward(self, length: int = 1) -> None:
        """PyYAML's `Reader.forward`, which counts lines and columns a character at a time in Python (a third of
        the time of composing a large spec), done at once where the characters passed hold no line break."""
        start, end = self.pointer, self.pointer + length
        if end + 1 >= len(self.buffer) or (self.buffer[start] in _LINE_MOVERS if length == 1
                                           else _MOVES_LINE.search(self.buffer, start, end) is not None):
            super().forward(length)
            return
        self.pointer, self.index, self.column = end, self.index + length, self.column + length

    def compose_node(self, parent: Node | None, index: Any) -> Node | _Alias:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            target = super().compose_node(parent, index)
            return _Alias(event.anchor, target, event.start_mark, event.end_mark)
        mark = event.start_mark
        if event.anchor is not None and event.anchor in self.anchors:
            first = self.anchors[event.anchor].start_mark
            self.fail("E0105", f"anchor `&{event.anchor}` is defined twice", mark,
                      hint="give each anchor a different name",
                      notes=[(self.loc(first), "first defined here")])
        self.count += 1
        if self.count > self.max_nodes:
            self.fail("E0112", f"spec has too many nodes (more than {self.max_nodes:,}"
                      + (f", what is left of {MAX_NODES:,} for a spec and its imports together)"
                         if self.max_nodes < MAX_NODES else ")"), mark, hint="split the spec or simplify it")
        nested = isinstance(event, (SequenceStartEvent, MappingStartEvent))
        self.depth += nested
        try:
            if self.depth > MAX_DEPTH:
                self.fail("E0114", f"nesting deeper than {MAX_DEPTH} levels", mark,
                          found=f"more than {MAX_DEPTH} nested mappings/lists", hint="flatten the spec")
            return super().compose_node(parent, index)
        finally:
            self.depth -= nested


class _Builder:
    """Converts composed nodes into plain data, recording each path's node."""

    def __init__(self, locator: _Locator) -> None:
        self.at, self.count, self.active = locator, 0, set()  # active: ids of collections being built
        self.values: dict[PathT, Node | _Alias] = {}
        self.keys: dict[PathT, Node | _Alias] = {}
        self.via: list[tuple[_Alias, PathT]] = []  # aliases being expanded, outermost first

    def fail(self, code: str, msg: str, node: Node | _Alias, path: PathT, **kw: Any) -> NoReturn:
        raise SpecError(code, msg, self.at.of(node, path), **kw)

    def check_tag(self, node: Node, path: PathT) -> None:
        tag = node.tag
        if tag == _IMPLICIT:
            return
        shown = "!!" + tag[len(_Y):] if tag.startswith(_Y) else tag
        if tag not in _STD_TAGS:
            raise SpecError("E0110", "tags are not allowed", self.at.tag(node, path), found=f"`{shown}`",
                            expected="a plain value without a `!tag`",
                            hint="remove the tag; quote the value to make it a string")
        kind = {_Y + "map": MappingNode, _Y + "seq": SequenceNode}.get(tag, ScalarNode)
        if not isinstance(node, kind):
            raise SpecError("E0117", f"`{shown}` cannot tag this value", self.at.tag(node, path),
                            found=_NODE_KIND[type(node)], hint=f"remove `{shown}`")

    def blame(self, ref: Node | _Alias, path: PathT) -> Location:
        """The outermost alias being expanded (the place to fix), else ``ref`` itself."""
        return self.at.of(*(self.via[0] if self.via else (ref, path)))

    def value(self, ref: Node | _Alias, path: PathT, depth: int) -> Any:
        if not isinstance(ref, _Alias):
            return self.build(ref, ref, path, depth)
        self.via.append((ref, path))
        try:
            return self.build(ref.target, ref, path, depth)
        finally:
            self.via.pop()

    def build(self, node: Node, ref: Node | _Alias, path: PathT, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError("E0112", "too many nodes after expanding aliases (alias bomb?)", self.blame(ref, path),
                            found=f"more than {MAX_NODES:,} nodes", hint="use fewer or smaller aliases")
        self.values[path] = ref
        self.check_tag(node, path)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.fail("E0113", f"alias `*{getattr(ref, 'name', '?')}` is used inside its own anchor", ref, path,
                      hint="an anchor cannot contain itself",
                      notes=[(self.at.of(node, path), "the anchored node starts here")])
        if depth + 1 > MAX_DEPTH:
            raise SpecError("E0114", f"nesting deeper than {MAX_DEPTH} levels (after expanding aliases)",
                            self.blame(ref, path), found=f"more than {MAX_DEPTH} nested mappings/lists",
                            hint="flatten the spec")
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.value(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
            out: dict[str, Any] = {}
            for key_ref, value_ref in node.value:
                key = self.key(key_ref, path)
                sub = path + (key,)
                if key in out:
                    first = self.keys[sub]
                    raw = {_raw_key(key_ref), _raw_key(first)}
                    same = f" (`{'` and `'.join(sorted(raw))}` are one name to Python: NFKC)" if len(raw) > 1 else ""
                    self.fail("E0109", f"duplicate key `{key}`{same}", key_ref, sub,
                              hint="remove or rename one of them", notes=[(self.at.of(first, sub), "first defined here")])
                self.keys[sub] = key_ref
                out[key] = self.value(value_ref, sub, depth + 1)
            return out
        finally:
            self.active.discard(id(node))

    def key(self, ref: Node | _Alias, parent: PathT) -> str:
        node = ref.target if isinstance(ref, _Alias) else ref
        self.count += 1
        self.check_tag(node, parent)
        if not isinstance(node, ScalarNode):
            self.fail("E0111", "mapping keys must be plain strings", ref, parent,
                      found=_NODE_KIND[type(node)], hint="use a name as the key")
        self.check_text(node.value, ref, parent)
        if node.style is None and node.tag == _IMPLICIT and node.value in ("", "<<"):
            if node.value == "<<":
                self.fail("E0119", "merge keys (`<<`) are not supported", ref, parent,
                          hint="write the keys out, or alias the whole value")
            self.fail("E0111", "empty mapping key", ref, parent, found="an empty key", hint="write a name before `:`")
        return normalize(node.value)  # keys are names: read as Python reads identifiers

    def check_text(self, text: str, ref: Node | _Alias, path: PathT) -> None:
        """No string holds a NUL after YAML's escapes (``"\\0"``), which no file name or C string takes: refused
        here, once, for every name, equation and import path. Other control characters are text that the outputs
        escape (a `doc:`); a lone surrogate is refused where it cannot be used (a name is no identifier, an import
        path names no file: `seqdsl.imports`)."""
        if "\0" in text:
            self.fail("E0102", "NUL character in a string (written as an escape)", ref, path, found="U+0000",
                      expected="printable text", hint="remove the escape; names and paths are plain text")

    def scalar(self, node: ScalarNode, path: PathT) -> Any:
        text, tag = node.value, node.tag
        self.check_text(text, node, path)
        if tag == _IMPLICIT and node.style is not None or tag == _Y + "str":
            return text
        if tag == _IMPLICIT:
            if text in _NULLS:
                return None
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            number = self.number(text, node, path)
            return text if number is None else number
        word = tag[len(_Y):]
        if word == "null" and text in _NULLS:
            return None
        if word == "bool" and (text in _TRUE or text in _FALSE):
            return text in _TRUE
        number = self.number(text, node, path) if word in ("int", "float") else None
        if word == "int" and isinstance(number, int):
            return number
        if word == "float" and number is not None:
            return float(number)
        self.fail("E0117", f"`{text}` is not a valid `!!{word}`", node, path, found=f"`{text}`",
                  hint=f"remove `!!{word}` or fix the value")

    def number(self, text: str, node: ScalarNode, path: PathT) -> int | float | None:
        if _AMBIGUOUS.fullmatch(text):
            try:
                plain = str(int(text, 10 if _INT.fullmatch(text) else 0))
                hint = f"write `{plain}`, or quote it (\"{text}\") to keep it as text"
            except ValueError:
                hint = f"quote it (\"{text}\") to keep it as text"
            self.fail("E0115", f"ambiguous number `{text}`", node, path, found=f"`{text}`",
                      expected="a decimal number without leading zeros, prefixes or underscores", hint=hint)
        if _INT.fullmatch(text):
            if len(text.lstrip("+-")) <= 19 and abs(value := int(text)) <= MAX_INT:
                return value
            self.fail("E0116", f"integer `{text}` is out of range", node, path,
                      expected="at most 10**18 in magnitude", found=f"`{text}`")
        if _INF.fullmatch(text):
            return -math.inf if text.startswith("-") else math.inf
        if _NAN.fullmatch(text):
            return math.nan
        if _FLOAT.fullmatch(text):
            if math.isinf(value := float(text)):
                self.fail("E0116", f"number `{text}` is out of range", node, path, found=f"`{text}`",
                          hint="write `.inf` if you mean infinity")
            return value
        return None


def _raw_key(ref: Node | _Alias) -> str:
    """A key as written, before NFKC normalisation."""
    return str((ref.target if isinstance(ref, _Alias) else ref).value)


def _kind(value: Any) -> str:
    """A type name for messages, e.g. ``a list``."""
    for typ, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                      (list, "a list"), (dict, "a mapping")):
        if isinstance(value, typ):
            return name
    return "null"


def _check_chars(text: str, file: str) -> None:
    if m := _BAD_CHAR.search(text):
        what = "NUL character" if m.group() == "\0" else f"control character U+{ord(m.group()):04X}"
        raise SpecError("E0102", f"{what} in spec", _Locator(file, text).span(m.start(), m.end(), ()), found=f"U+{ord(m.group()):04X}",
                        hint="remove it; a spec must be UTF-8 text (is this a binary or UTF-16 file?)")


def _whole(file: str) -> Location:
    """Where an error about a whole file points: its first line and column, so that editors and grep find it."""
    return Location(file, 1, 1)


def _size_check(size: int, file: str, limit: int = MAX_SPEC_BYTES) -> None:
    if size > limit:
        left = f", what is left of {MAX_SPEC_BYTES:,} for a spec and its imports together" if limit < MAX_SPEC_BYTES else ""
        raise SpecError("E0103", f"spec is too large: {size:,} bytes (the limit is {limit:,}{left})",
                        _whole(file), expected=f"at most {limit:,} bytes", found=f"{size:,} bytes",
                        hint="split the spec into smaller files")


def _decode(raw: bytes, file: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        prefix = raw[: e.start].decode("utf-8").removeprefix("\ufeff")
        _check_chars(prefix, file)  # an earlier NUL wins
        raise SpecError("E0101", f"spec is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})",
                        _Locator(file, prefix).span(len(prefix), len(prefix), ()), hint="save the file as UTF-8") from None


def _syntax_error(e: yaml.MarkedYAMLError, file: str, text: str) -> SpecError:
    mark = e.problem_mark or e.context_mark
    loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
    problem = e.problem or e.context or "invalid YAML"
    if problem.startswith("found character '\\t'") and mark:
        before = text[mark.index - mark.column : mark.index]
        if before.strip(" \t"):
            return SpecError("E0104", "tab character where YAML expects a space", loc, hint="use spaces, not tabs")
        return SpecError("E0104", "tab character used for indentation", loc, hint="indent with spaces")
    hint = e.context
    if e.context and e.context_mark and mark and e.context_mark.line != mark.line:
        hint = f"{e.context} that starts at line {e.context_mark.line + 1}"
    if e.context in ("while parsing a flow mapping", "while parsing a flow sequence"):
        hint += ("; inside `{...}` or `[...]` an equation containing `[`, `]`, `{`, `}` or `,` must be quoted "
                 "(`{h: \"tanh(U @ h[t-1])\"}`), or written one key per line")
    return SpecError("E0105", f"invalid YAML: {problem}", loc, hint=hint)


def load_text(text: str | bytes, file: str = "<spec>", max_bytes: int = MAX_SPEC_BYTES,
              max_nodes: int = MAX_NODES) -> Document:
    """Parse spec text (str, or bytes that must be UTF-8) into a `Document`; raises `SpecError`. ``max_bytes`` and
    ``max_nodes`` are what an imported file may still take of the limits for a spec and its imports together."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    _size_check(len(raw), file, max_bytes)
    digest = hashlib.sha256(raw).hexdigest()
    if not isinstance(text, str):
        text = _decode(raw, file)
    text = text.removeprefix("\ufeff")
    _check_chars(text, file)
    loader = _Composer(text, file, max_nodes)
    try:
        loader.get_event()  # stream start
        if loader.check_event(StreamEndEvent):
            raise SpecError("E0106", "empty spec", Location(file, 1, 1), hint=_EMPTY_HINT)
        root = loader.compose_document()
        if not loader.check_event(StreamEndEvent):
            loader.fail("E0107", "spec has several YAML documents", loader.peek_event().start_mark,
                        hint="remove the second `---` (one spec per file)")
    except yaml.MarkedYAMLError as e:
        raise _syntax_error(e, file, text) from None
    except yaml.YAMLError as e:
        raise SpecError("E0105", f"invalid YAML: {e}", Location(file)) from None
    except RecursionError:
        raise SpecError("E0114", "nesting too deep", Location(file), hint="flatten the spec") from None
    finally:
        loader.dispose()
    if isinstance(root, ScalarNode) and root.tag == _IMPLICIT and root.style is None and root.value == "":
        raise SpecError("E0106", "empty spec", Location(file, 1, 1), hint=_EMPTY_HINT)
    builder = _Builder(_Locator(file, text))
    data = builder.value(root, (), 0)
    if not isinstance(data, dict):
        raise SpecError("E0108", "the spec must be a mapping of sections", builder.at.of(root, ()),
                        expected="a mapping (`key: value` lines)", found=_kind(data))
    return Document(data, file, text, builder.values, builder.keys, sha256=digest,
                    size=len(raw), nodes=loader.count)


def load_file(path: str | Path, max_bytes: int = MAX_SPEC_BYTES, max_nodes: int = MAX_NODES) -> Document:
    """Read and parse a spec file; a missing, unreadable or oversized file raises `SpecError`."""
    p, name = Path(path), str(path)
    try:
        missing = not p.exists() and not p.is_symlink()
    except (OSError, ValueError):  # a name too long for the file system, say: reading it says why
        missing = False
    if missing:
        try:
            hint = did_you_mean(p.name, (c.name for c in p.parent.iterdir()))
        except OSError:
            hint = None
        raise SpecError("E0118", f"spec file not found: {name}", Location(name), hint=hint or "check the path")  # no line 1
    try:
        if p.is_dir():
            raise IsADirectoryError(21, "it is a directory")
        _size_check(p.stat().st_size, name, max_bytes)  # before reading anything
        with p.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)  # the file may have grown since stat()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SpecError("E0120", f"cannot read spec file: {why}", _whole(name),
                        hint="check the path and its permissions") from None
    return load_text(raw, name, max_bytes, max_nodes)
