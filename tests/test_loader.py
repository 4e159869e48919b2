"""Tests for seqdsl.loader: YAML text -> plain data with locations, and every loader error code."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqdsl.errors import SpecError
from seqdsl.codes import CODES
from seqdsl.loader import MAX_DEPTH, MAX_SPEC_BYTES, Document, load_file, load_text

SPEC = """\
sizes: {d: 16, h: 32}
inputs:
  x: [B, T, d]
recurrent:
  state: {h: [B, h]}
  step:
    h: tanh(W @ x + U @ h[t-1] + b)
"""

CONSTRUCTED: list[str] = []


def _boom(*args: object) -> None:  # would be called if a python/object tag were ever constructed
    CONSTRUCTED.append("boom")


def err(text: str | bytes, file: str = "<spec>") -> SpecError:
    with pytest.raises(SpecError) as info:
        load_text(text, file)
    return info.value


def check(e: SpecError, code: str, line: int, col: int, words: str) -> None:
    assert (e.code, e.loc.line, e.loc.col) == (code, line, col), e.format()
    assert words in e.message, e.message
    assert code in CODES


# --- good input and locations -------------------------------------------------------------------


def test_realistic_spec_round_trip() -> None:
    doc = load_text(SPEC, "rnn.yaml")
    assert doc.data == {
        "sizes": {"d": 16, "h": 32},
        "inputs": {"x": ["B", "T", "d"]},
        "recurrent": {"state": {"h": ["B", "h"]}, "step": {"h": "tanh(W @ x + U @ h[t-1] + b)"}},
    }
    assert list(doc.data) == ["sizes", "inputs", "recurrent"]
    assert doc.file == "rnn.yaml" and doc.source == SPEC
    d = doc.loc(("sizes", "d"))
    assert (d.file, d.line, d.col, d.path, d.length) == ("rnn.yaml", 1, 12, "sizes.d", 2)
    x1 = doc.loc(("inputs", "x", 1))
    assert (x1.line, x1.col, x1.path) == (3, 10, "inputs.x[1]")
    h = doc.loc(("recurrent", "step", "h"))
    assert (h.line, h.col, h.length, h.path) == (7, 8, 28, "recurrent.step.h")
    k = doc.key_loc(("recurrent", "step", "h"))
    assert (k.line, k.col) == (7, 5)
    assert doc.value_col_offset(("recurrent", "step", "h")) == 0
    # column i of the expression text -> file column
    i = doc.data["recurrent"]["step"]["h"].index("U")
    assert SPEC.splitlines()[h.line - 1][h.col - 1 + i] == "U"


def test_loc_nested_flow_and_block() -> None:
    doc = load_text("top: {a: [1, 2]}\nblock:\n  a:\n    - 1\n    - 2\n")
    assert doc.data == {"top": {"a": [1, 2]}, "block": {"a": [1, 2]}}
    assert (doc.loc(("top", "a", 1)).line, doc.loc(("top", "a", 1)).col) == (1, 14)
    assert (doc.loc(("top", "a")).line, doc.loc(("top", "a")).col) == (1, 10)
    assert (doc.key_loc(("top", "a")).line, doc.key_loc(("top", "a")).col) == (1, 7)
    assert (doc.loc(("block", "a", 1)).line, doc.loc(("block", "a", 1)).col) == (5, 7)
    assert (doc.loc(("block", "a")).line, doc.loc(("block", "a")).col) == (4, 5)
    assert (doc.key_loc(("block", "a")).line, doc.key_loc(("block", "a")).col) == (3, 3)


def test_loc_falls_back_to_nearest_ancestor() -> None:
    doc = load_text(SPEC)
    loc = doc.loc(("inputs", "x", 7))
    assert (loc.line, loc.col, loc.path) == (3, 6, "inputs.x[7]")
    loc = doc.loc(("nope", "deeper"))
    assert (loc.line, loc.col) == (1, 1)
    assert doc.key_loc(("recurrent", "missing")) == doc.loc(("recurrent", "missing"))


def test_value_col_offset() -> None:
    text = "a: plain text\nb: 'single'\nc: \"double\"\nd: |\n  block\ne: \"esc\\tape\"\nf: &x anchored\ng: *x\nh: [1]\n"
    doc = load_text(text)
    assert [doc.value_col_offset((k,)) for k in "abcdefgh"] == [0, 1, 1, -1, -1, 0, -1, -1]
    assert doc.value_col_offset(("zz",)) == -1
    f = doc.loc(("f",))
    assert (f.line, f.col, f.length) == (7, 7, 8)  # past the `&x`
    g = doc.loc(("g",))
    assert (g.line, g.col) == (8, 4)  # the alias itself
    b = doc.loc(("b",))
    assert text.splitlines()[1][b.col - 1 + 1 :].startswith("single")


def test_aliases_are_copied_and_located() -> None:
    doc = load_text("base: &b {d: 16}\nother: *b\n")
    assert doc.data == {"base": {"d": 16}, "other": {"d": 16}}
    assert doc.data["base"] is not doc.data["other"]
    assert (doc.loc(("other",)).line, doc.loc(("other",)).col) == (2, 8)
    assert (doc.loc(("other", "d")).line, doc.loc(("other", "d")).col) == (1, 14)


def test_utf8_bom_crlf_and_bytes() -> None:
    doc = load_text("\ufeffa: é\r\nb: 2\r\n".encode())
    assert doc.data == {"a": "é", "b": 2}
    assert (doc.loc(("b",)).line, doc.loc(("b",)).col) == (2, 4)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False),
        ("null", None), ("~", None), ("", None), ("42", 42), ("-7", -7), ("+3", 3), ("0", 0), ("-0", 0),
        ("1.5", 1.5), ("1e-3", 0.001), ("-2.5E+4", -25000.0), (".5", 0.5), ("1.", 1.0), ("01.5", 1.5),
        (".inf", math.inf), ("-.inf", -math.inf), ("yes", "yes"), ("no", "no"), ("on", "on"),
        ("off", "off"), ("y", "y"), ("n", "n"), ("'true'", "true"), ('"42"', "42"), ("1:30", "1:30"),
        ("1.2.3", "1.2.3"), ("a-b", "a-b"), ("e3", "e3"), ("!!str 010", "010"), ("!!float 1", 1.0),
        ("!!int '12'", 12), ("!!bool false", False), ("!!null ''", None), ("'010'", "010"),
        (str(10**18), 10**18), (str(-(10**18)), -(10**18)),
    ],
)
def test_scalar_resolution(text: str, value: object) -> None:
    got = load_text(f"v: {text}\n").data["v"]
    assert got == value and type(got) is type(value)


def test_nan() -> None:
    assert math.isnan(load_text("v: .nan\n").data["v"])


def test_keys_stay_literal_text() -> None:
    doc = load_text("1: a\nno: b\ntrue: c\nnull: d\n1.5: e\n'q': f\n!!str 7: g\n")
    assert list(doc.data) == ["1", "no", "true", "null", "1.5", "q", "7"]
    assert all(isinstance(k, str) for k in doc.data)


def test_load_file(tmp_path: Path) -> None:
    p = tmp_path / "rnn.yaml"
    p.write_text(SPEC)
    doc = load_file(p)
    assert isinstance(doc, Document) and doc.data["sizes"] == {"d": 16, "h": 32}
    assert doc.loc(("sizes",)).file == str(p)


# --- errors -------------------------------------------------------------------------------------


def test_not_utf8() -> None:
    e = err(b"a: 1\nb: \xc3\xa9\xff\n", "x.yaml")
    check(e, "E0101", 2, 5, "not valid UTF-8")
    assert e.loc.file == "x.yaml" and "UTF-8" in (e.hint or "")


def test_nul_and_control_characters() -> None:
    check(err(b"a: 1\nb: x\x00y\n"), "E0102", 2, 5, "NUL")
    check(err(b"a: \x00\xff"), "E0102", 1, 4, "NUL")  # the NUL comes first
    check(err("a: 1\nb:\x01\n"), "E0102", 2, 3, "control character U+0001")


def test_size_cap_text() -> None:
    e = err("a: " + "x" * MAX_SPEC_BYTES)
    check(e, "E0103", 1, 1, "too large")  # a whole-file error: file:1:1 (issue 9)
    assert f"{MAX_SPEC_BYTES + 3:,}" in e.message and f"{MAX_SPEC_BYTES:,}" in e.message


def test_size_cap_file_is_checked_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.yaml"
    p.write_bytes(b"a: " + b"x" * MAX_SPEC_BYTES)

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("opened a file over the cap")

    monkeypatch.setattr(Path, "open", no_open)
    with pytest.raises(SpecError) as info:
        load_file(p)
    check(info.value, "E0103", 1, 1, f"{MAX_SPEC_BYTES + 3:,} bytes")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text("a: 1\n")
    with pytest.raises(SpecError) as info:
        load_file(tmp_path / "modle.yaml")
    check(info.value, "E0118", 0, 0, "not found")
    assert "model.yaml" in (info.value.hint or "")
    with pytest.raises(SpecError) as info:
        load_file(tmp_path)
    check(info.value, "E0120", 1, 1, "directory")


def test_tabs() -> None:
    e = err("a:\n  b: 1\n\tc: 2\n")
    check(e, "E0104", 3, 1, "indentation")
    assert e.hint == "indent with spaces"
    check(err("a:\n  \t- 1\n"), "E0104", 2, 3, "indentation")
    check(err("a:\t1\n"), "E0104", 1, 3, "tab")
    assert load_text("a: |\n  x\n  \ty\n").data == {"a": "x\n\ty\n"}  # tabs inside a block scalar are text


def test_yaml_syntax_errors() -> None:
    e = err("a: [1, 2\n")
    check(e, "E0105", 2, 1, "expected ',' or ']'")
    assert "flow sequence" in (e.hint or "") and "line 1" in (e.hint or "")
    check(err("a: b: c\n"), "E0105", 1, 5, "mapping values are not allowed")
    check(err("a: *nope\n"), "E0105", 1, 4, "undefined alias")
    e = err("a: &x 1\nb: &x 2\n")
    check(e, "E0105", 2, 4, "defined twice")
    assert e.notes[0][0].line == 1


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n  # another\n", "---\n", "--- # c\n"])
def test_empty(text: str) -> None:
    check(err(text), "E0106", 1, 1, "empty spec")


def test_several_documents() -> None:
    e = err("a: 1\n---\nb: 2\n")
    check(e, "E0107", 2, 1, "several YAML documents")
    check(err("---\na: 1\n# x\n---\n"), "E0107", 4, 1, "several")


@pytest.mark.parametrize(("text", "found"), [("- 1\n", "a list"), ("hello\n", "a string"), ("42", "an integer"),
                                             ("~\n", "null"), ("true\n", "a boolean")])
def test_root_not_mapping(text: str, found: str) -> None:
    e = err(text)
    check(e, "E0108", 1, 1, "must be a mapping")
    assert e.found == found


def test_duplicate_keys() -> None:
    e = err("a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\n")
    check(e, "E0109", 5, 3, "duplicate key `c`")
    assert e.loc.path == "b.c" and e.notes[0][0].line == 3 and "first" in e.notes[0][1]
    check(err("m: {x: 1, x: 2}\n"), "E0109", 1, 11, "duplicate key `x`")
    check(err("1: a\n'1': b\n"), "E0109", 2, 1, "duplicate key `1`")


def test_tags_rejected_and_nothing_constructed() -> None:
    e = err("a: !!python/object/apply:tests.test_loader._boom [1]\n")
    check(e, "E0110", 1, 4, "tags are not allowed")
    assert "python/object/apply" in (e.found or "")
    check(err("a:\n  b: !foo x\n"), "E0110", 2, 6, "tags are not allowed")
    check(err("a: !!binary aGVsbG8=\n"), "E0110", 1, 4, "tags")
    check(err("a: !!set {x}\n"), "E0110", 1, 4, "tags")
    check(err("!!python/name:os.system x: 1\n"), "E0110", 1, 1, "tags")
    assert CONSTRUCTED == []


def test_standard_tag_mismatch() -> None:
    check(err("a: !!int abc\n"), "E0117", 1, 10, "not a valid `!!int`")
    check(err("a: !!bool yes\n"), "E0117", 1, 11, "not a valid `!!bool`")
    check(err("a: !!str {b: 1}\n"), "E0117", 1, 4, "cannot tag")
    check(err("a: !!map [1]\n"), "E0117", 1, 4, "cannot tag")


def test_bad_keys() -> None:
    e = err("? [a, b]\n: 1\n")
    check(e, "E0111", 1, 3, "keys must be plain strings")
    assert e.found == "a list"
    check(err("a: {{x: 1}: 2}\n"), "E0111", 1, 5, "keys must be plain strings")
    check(err("? \n: x\n"), "E0111", 1, 2, "empty mapping key")
    check(err("base: &b {d: 1}\nm:\n  <<: *b\n"), "E0119", 3, 3, "merge keys")


BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
) + "\n"


def test_billion_laughs_is_stopped_quickly() -> None:
    start = time.perf_counter()
    e = err(BILLION_LAUGHS)
    assert time.perf_counter() - start < 5
    assert e.code == "E0112" and "alias bomb" in e.message and e.loc.line >= 1


def test_too_many_plain_nodes() -> None:
    e = err("a: [" + ",".join(["1"] * 100_001) + "]\n")
    check(e, "E0112", 1, e.loc.col, "too many nodes")


def test_self_referencing_alias() -> None:
    e = err("a: &x [1, *x]\n")
    check(e, "E0113", 1, 11, "inside its own anchor")
    e = err("a: &m\n  k: *m\n")
    check(e, "E0113", 2, 6, "`*m`")


def test_depth_limit() -> None:
    ok = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    assert isinstance(load_text(ok).data["a"], list)  # root mapping + 63 lists = 64 levels
    check(err("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n"), "E0114", 1, 4 + MAX_DEPTH - 1, "nesting deeper")
    start = time.perf_counter()
    check(err("[" * 10_000), "E0114", 1, MAX_DEPTH + 1, "nesting deeper")
    check(err("{a: " * 10_000), "E0114", 1, 4 * MAX_DEPTH + 1, "nesting deeper")
    block = "a:\n" + "".join("  " * i + "-\n" for i in range(1, 200))
    check(err(block), "E0114", MAX_DEPTH + 1, 2 * MAX_DEPTH + 1, "nesting")
    assert time.perf_counter() - start < 5


def test_depth_limit_after_alias_expansion() -> None:
    deep = "[" * 40 + "]" * 40
    e = err(f"x: &d {deep}\ny: {'[' * 30}*d{']' * 30}\n")
    check(e, "E0114", 2, 34, "after expanding aliases")


@pytest.mark.parametrize(
    ("text", "hint"),
    [("010", "`10`"), ("-010", "`-10`"), ("0x1F", "`31`"), ("0o17", "`15`"), ("0b101", "`5`"), ("1_000", "`1000`")],
)
def test_ambiguous_numbers(text: str, hint: str) -> None:
    e = err(f"v: {text}\n")
    check(e, "E0115", 1, 4, f"ambiguous number `{text}`")
    assert hint in (e.hint or "") and "quote" in (e.hint or "")
    assert e.loc.length == len(text)


@pytest.mark.parametrize("text", [str(10**18 + 1), "-" + str(10**18 + 1), "9" * 5000, "1e999", "-1.5e400"])
def test_numbers_out_of_range(text: str) -> None:
    check(err(f"v: {text}\n"), "E0116", 1, 4, "out of range")


def test_explicit_int_out_of_range() -> None:
    check(err("v: !!int 1" + "0" * 19 + "\n"), "E0116", 1, 10, "out of range")


def test_codes_table() -> None:
    assert sorted(c for c in CODES if c.startswith("E01")) == [f"E01{i:02d}" for i in range(1, 21)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(),
        st.binary(),
        st.lists(st.sampled_from(list("ab01 :-[]{},&*!|>'\"#\n\t?.~") + ["---", "&a", "*a", "!!str", "\n  "]))
        .map("".join),
    )
)
def test_arbitrary_input_gives_document_or_spec_error(data: str | bytes) -> None:
    try:
        doc = load_text(data)
    except SpecError as e:
        assert e.code in CODES
        e.format()
        return
    assert isinstance(doc.data, dict)
