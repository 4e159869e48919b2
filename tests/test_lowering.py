"""The language end of the pipeline: names, cycles, shapes and states, each mistake located in the file."""

from __future__ import annotations

import pytest

from conftest import SPECS, load_text, spec_error

import seqdsl
from seqdsl.ir import loop_of

RNN = """\
sizes: {d: 4, h: 8}
inputs:
  x: [B, T, d]
params:
  W: [h, d]
  U: [h, h]
  b: [h]
recurrent:
  state: {h: [B, h]}
  step:
    h: tanh(W @ x + U @ h[t-1] + b)
outputs: {y: h, h_n: final(h)}
"""


def test_rnn_lowers_to_one_loop_with_shared_parameters():
    model = load_text(RNN)
    loops = [n for n in model.graph if n.op == "loop"]
    assert len(loops) == 1
    body = loop_of(loops[0]).body
    assert sorted(n.attrs["name"] for n in body if n.op == "param") == ["U", "W", "b"]
    assert model.param_count == 8 * 4 + 8 * 8 + 8
    assert model.graph[model.graph.outputs["y"]].shape == ("B", "T", 8)
    assert model.graph[model.graph.outputs["h_n"]].shape == ("B", 8)


def test_size_override_changes_every_shape():
    model = load_text(RNN, sizes={"h": 3})
    assert model.params["U"].shape == (3, 3)
    assert model.graph[model.graph.outputs["y"]].shape == ("B", "T", 3)


def test_size_expressions_fold():
    model = load_text(RNN.replace("sizes: {d: 4, h: 8}", "sizes: {d: 4, h: 2 * d}"))
    assert model.params["U"].shape == (8, 8)


def test_unknown_name_is_located_with_a_suggestion():
    err = spec_error(RNN.replace("+ b)", "+ bb)"))
    assert err.code == "E0301"
    assert (err.loc.line, err.loc.col) == (11, 34)
    assert "unknown name `bb`" in err.message
    assert err.hint == "did you mean `b`?"
    assert err.loc.path == "recurrent.step.h"


def test_shape_mismatch_names_both_shapes():
    err = spec_error(RNN.replace("U: [h, h]", "U: [h, d]"))
    assert err.code == "E0403"
    assert err.loc.line == 11 and err.loc.col == 21  # the `U @ h[t-1]` sub-expression
    assert "[8, 4]" in err.message and "['B', 8]" not in err.message
    assert "[B, 8]" in err.message


def test_cycle_without_delay_names_the_equations():
    err = spec_error(RNN.replace("    h: tanh(W @ x + U @ h[t-1] + b)",
                                 "    a: tanh(W @ x + U @ c)\n    c: a * 2\n    h: c"))
    assert err.code == "E0402"
    assert "a -> c -> a" in err.message or "c -> a -> c" in err.message
    assert "[t-1]" in (err.hint or "")


def test_delay_of_a_non_state():
    err = spec_error(RNN.replace("U @ h[t-1]", "U @ hh[t-1]"))
    assert err.code == "E0312"
    assert err.hint == "did you mean `h`?"


def test_state_without_update():
    err = spec_error(RNN.replace("state: {h: [B, h]}", "state: {h: [B, h], c: [B, h]}"))
    assert err.code == "E0405"
    assert "state `c` has no update" in err.message


def test_state_update_of_the_wrong_shape():
    err = spec_error(RNN.replace("state: {h: [B, h]}", "state: {h: [B, d]}").replace("U: [h, h]", "U: [h, d]"))
    assert err.code == "E0403"
    assert err.expected == "[B, 4]" and err.found == "[B, 8]"


def test_token_ids_into_a_linear_map():
    err = spec_error(RNN.replace("x: [B, T, d]", "x: {shape: [B, T, d], dtype: int64}"))
    assert err.code == "E0403"
    assert "int64" in err.message and "embedding" in (err.hint or "")


def test_unknown_function_suggests():
    err = spec_error(RNN.replace("tanh(", "tahn("))
    assert err.code == "E0314" and err.hint == "did you mean `tanh`?"


def test_python_is_never_evaluated():
    err = spec_error(RNN.replace("tanh(W @ x + U @ h[t-1] + b)", "__import__('os').system('echo hi')"))
    assert err.code in ("E0304", "E0314")
    err = spec_error(RNN.replace("tanh(W @ x + U @ h[t-1] + b)", "'sum(v for v in b)'"))
    assert err.code == "E0304"
    err = spec_error(RNN.replace("{d: 4, h: 8}", "{d: 4, h: 2 ** 100000}"))
    assert err.code == "E0306"


@pytest.mark.parametrize("size, message", [("d / 0", "division by zero"), ("3 / 2", "not a whole number"),
                                           ("-4", "positive"), ("0", "positive")])
def test_bad_sizes(size, message):
    err = spec_error(RNN.replace("h: 8}", f"h: {size}}}"))
    assert err.code == "E0306"
    assert message in err.message
    assert err.loc.line == 1


def test_unknown_size_override():
    err = spec_error(RNN, sizes={"hd": 4})
    assert err.code == "E0309" and err.hint == "did you mean `h`?"


def test_schema_unknown_key_with_suggestion():
    err = spec_error(RNN.replace("outputs:", "outptus:"))
    assert err.code == "E0201"
    assert err.hint == "did you mean `outputs`?"
    assert err.loc.line == 12 and err.loc.col == 1


def test_schema_wrong_type():
    err = spec_error(RNN.replace("W: [h, d]", "W: 12"))
    assert err.code == "E0203"
    assert err.loc.line == 5


def test_chunk_names_several_values():
    model = load_text(RNN.replace("    h: tanh(W @ x + U @ h[t-1] + b)",
                                  "    a, c: chunk(tanh(W @ x + U @ h[t-1] + b), 2)\n    h: concat(c, a)"))
    assert model.graph[model.graph.outputs["y"]].shape == ("B", "T", 8)


def test_module_call_infers_sizes_and_prefixes_parameters():
    model = seqdsl.load(SPECS / "classifier.yaml", {"h": 12})
    assert "lstm.W_f" in model.params and model.params["lstm.W_f"].shape == (12, 16)
    assert model.graph[model.graph.outputs["logits"]].shape == ("B", 5)


def test_every_spec_verifies():
    for path in sorted(SPECS.glob("*.yaml")):
        seqdsl.load(path).verify()


@pytest.mark.parametrize("name", ["../../etc", "a/b", "x" * 100, "con sole"])
def test_model_name_cannot_escape_the_output_folder(name):
    err = spec_error(f"name: {name!r}\n" + RNN)
    assert err.code == "E0310" and err.loc.line == 1


@pytest.mark.parametrize("equation, code, words", [
    ("tanh(b) * " + "9" * 5000, "E0302", "too long"),                   # a 5,000-digit literal: over the length cap
    ("tanh(b) * " + "9" * 1900, "E0302", "too large"),                  # 1,900 digits: under it, still refused
    ("(" * 200 + "b" + ")" * 200, "E0403", "wrong shape"),               # parentheses alone nest nothing: harmless
    ("tanh(" * 60 + "b" + ")" * 60, "E0302", "nested deeper"),           # calls do nest: bounded
    ("tanh(W @ x + U @ h[t-1] + b) " + "+ b " * 600, "E0302", "too long"),
    ("tanh(W @ x + U @ h[t-1] + b) * 1e300", "E0302", "too large"),
    ("lambda: 0", "E0304", "not allowed"),
    ("b.__class__", "E0301", "not a module call"),
])
def test_expressions_are_bounded_and_never_python(equation, code, words):
    err = spec_error(RNN.replace("tanh(W @ x + U @ h[t-1] + b)", f"'{equation}'"))
    assert err.code == code and words in err.format()


@pytest.mark.parametrize("name", ["class", "lambda", "import", "_hidden", "sigmoid", "t", "1x"])
def test_names_that_are_not_plain_identifiers_never_reach_generated_code(name):
    err = spec_error(RNN.replace("  b: [h]", f"  '{name}': [h]"))
    assert err.code == "E0310" and err.loc.line == 7
