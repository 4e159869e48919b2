"""Names and text from a spec are untrusted: nothing in them runs, and the compiler's own names never collide
with them (`seqdsl.naming`).

1. Payloads (triple quotes with code, newlines, NUL, lone surrogates, U+2028 ...) in every place where spec text
   reaches model.py or model.onnx: the spec's file name, an imported file's name (both in docstrings and
   `# file:line` comments) and every name position, where they must be checked identifiers.
2. Names the compiler invents (helpers, builtins, Model's methods, `h_steps`, `h_0`, ...) given to spec values.
3. A property test draws names from a hostile pool into every naming position: each build either passes its
   check (onnxruntime against PyTorch) or fails with a located SpecError.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import textwrap
import tokenize
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import load_text, spec_error

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_codegen import generate
from seqdsl.compilers.torch_module import module_class
from seqdsl import passes
from seqdsl.errors import SpecError
from seqdsl.naming import MODULE_ATTRIBUTES, escape
from seqdsl.text import plain_text
from seqdsl.version import __version__

LONG = os.environ.get("SEQDSL_LONG_TESTS") == "1"
MARKER = "PWNED"
CODE = f"__import__('pathlib').Path('{MARKER}').touch()"
PAYLOADS = [
    f'"""+{CODE}+"""', f"'''+{CODE}+'''", f"\n{CODE}\n#", f"\r{CODE}\r", f"\u2028{CODE}", f"\x85{CODE}",
    f"\\\n{CODE}", f'\\"""+{CODE}#', f"\x0c\x0b{CODE}", f"\t{CODE}\\", "\udc80\udcff", "ﬁ\u00e9\U0001f600",
]

CELL = """\
    name: {name}
    imports:
      Cell: {imported}
    sizes: {{d: 3}}
    inputs:
      x: [B, T, d]
    graph:
      enc: Cell(x)
    outputs:
      y: enc.y
      h_n: enc.h_n
"""
RNN = """\
    sizes: {d: 3, h: 4}
    inputs:
      x: [B, T, d]
    params:
      W: [h, d]
      U: [h, h]
    recurrent:
      state:
        h: [B, h]
      step:
        a: W @ x + U @ h[t-1]
        h: tanh(a) * 0.5
    outputs:
      y: h
      h_n: final(h)
"""


def _file_name_payload(text: str) -> str:
    """``text`` made a legal file name (no `/`, no NUL; `#` splits an import path)."""
    return text.replace("/", "_").replace("\0", "_").replace("#", "_")


def _yaml_string(text: str) -> str:
    """``text`` as a YAML double-quoted scalar: everything but printable ASCII as a ``\\U`` escape (a lone
    surrogate is then a file name's raw byte; a raw NEL would be a line break)."""
    return '"' + "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\U{ord(c):08x}" for c in text) + '"'


def _write(path: Path, text: str) -> Path:
    with open(os.fsencode(path), "w", encoding="utf-8") as f:  # fsencode: lone surrogates name raw bytes
        f.write(textwrap.dedent(text))
    return path


def _check_model_py(source: str, methods: set[str]) -> ast.Module:
    """model.py is a docstring, imports, helper functions and one class Model with the expected methods."""
    tree = ast.parse(source)
    first, *rest = tree.body
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    classes = [s for s in rest if isinstance(s, ast.ClassDef)]
    assert [c.name for c in classes] == ["Model"]
    assert all(isinstance(s, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)) for s in rest)
    body = classes[0].body
    assert isinstance(body[0], ast.Expr)
    assigned = [t.id for s in body if isinstance(s, ast.Assign) for t in s.targets]  # type: ignore[attr-defined]
    assert assigned == ["input_names", "output_names"]
    defs = {s.name for s in body if isinstance(s, ast.FunctionDef)}
    assert {"__init__", "reset_parameters", "forward", "_forward"} <= defs and defs - {"__init__", "reset_parameters", "forward", "_forward"} \
        == methods
    assert len(body) == 3 + len(defs)
    return tree


def _check_onnx(proto: onnx.ModelProto, model: seqdsl.Model) -> None:
    """Spec names are the graph's inputs, outputs and parameters; every other name is the compiler's (`#`, `/`);
    doc strings and metadata are plain text; the file checks and serialises."""
    onnx.checker.check_model(proto, full_check=True)
    g = proto.graph
    assert [i.name for i in g.input] == model.inputs
    assert [o.name for o in g.output] == list(model.graph.outputs)
    spec_names = set(model.inputs) | set(model.graph.outputs) | set(model.params)
    assert {i.name for i in g.initializer} - set(model.params) == {i.name for i in g.initializer if "#" in i.name}
    values = {v for n in g.node for v in [*n.input, *n.output] if v}
    assert all(v in spec_names or "#" in v or "/" in v for v in values), values - spec_names
    for text in [proto.doc_string, g.doc_string, *(n.doc_string for n in g.node),
                 *(p.value for p in proto.metadata_props)]:
        assert plain_text(text, len(text)) == text  # no control, format or surrogate character
    proto.SerializeToString()


def _parity(model: seqdsl.Model, net: nn.Module, optimize: bool = True) -> onnx.ModelProto:
    proto = export(model, optimize=optimize, native_cells=optimize)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    _check_onnx(proto, model)
    inputs = example_inputs(model, 2, 3)
    want = run_torch(net, inputs)
    got = run(proto.SerializeToString(), inputs).outputs
    assert set(got) == set(want) == set(model.graph.outputs)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=1e-4, err_msg=name)
    return proto


# ------------------------------------------------------------------------------------------------ 1. payloads

@given(st.text(st.one_of(st.characters(exclude_categories=()),  # every code point, lone surrogates included
                         st.sampled_from(list("\"'\\\n\r\t\x00\x0b\x0c\x1c\x85\u2028\u2029\ud800\udc80\ufeff#"))),
               max_size=40))
@settings(max_examples=300 if LONG else 100, deadline=None)
def test_escape_is_safe_in_every_literal_and_comment_and_keeps_the_text(text: str):
    safe = escape(text)
    assert safe.isascii() and safe.isprintable() and not set(safe) & {'"', "'", "\n", "\r"}
    for quote in ('"', "'", '"""', "'''"):
        assert ast.literal_eval(f"{quote}{safe}{quote}") == text
    tokens = list(tokenize.generate_tokens(io.StringIO(f"x = 1  # {safe}\n").readline))
    assert [t.type for t in tokens].count(tokenize.COMMENT) == 1 and tokens[-2].type == tokenize.NEWLINE


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_file_names_reach_model_py_and_onnx_as_escaped_text(payload: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """The spec's file name (module docstring, ONNX doc string) and an imported file's name (`# file:line`
    comments, the loop's docstring): nothing runs, model.py parses to the expected structure and says the name."""
    monkeypatch.chdir(tmp_path)
    name = _file_name_payload(payload)
    lib = _write(tmp_path / f"{name.replace(chr(92), '_')}.yaml", RNN)  # an import path has no backslash
    spec = _write(tmp_path / f"{name}main.yaml",
                  CELL.format(name="payload", imported=_yaml_string(lib.name)))
    model = seqdsl.load(os.fsdecode(os.fsencode(spec)))
    for optimize in (False, True):
        source = generate(passes.optimize(model) if optimize else model)
        tree = _check_model_py(source, methods={"_enc_loop"})
        assert ast.get_docstring(tree, clean=False).startswith(f"payload: generated by seqdsl from {spec.name}.")
        comments = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                    if t.type == tokenize.COMMENT and ".yaml:" in t.string]
        assert comments and all(escape(lib.name) + ":" in c for c in comments)
        loop = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_enc_loop")
        assert f"of {lib.name}:" in ast.get_docstring(loop, clean=False)
    cls = module_class(model, tmp_path / "model.py")
    torch.manual_seed(0)
    proto = _parity(model, cls())
    assert proto.doc_string == plain_text(f"payload: generated by seqdsl {__version__} from {spec.name}")
    assert {p.key: p.value for p in proto.metadata_props}["seqdsl.spec_file"] == plain_text(spec.name, 255)
    assert not (tmp_path / MARKER).exists()


POSITIONS = {  # where a name is declared in the RNN spec: (as written, the key to replace it with)
    "size": ("h: 4}", "{n}: 4}"), "input": ("x: [B", "{n}: [B"), "param": ("W: [h", "{n}: [h"),
    "state": ("h: [B, h]", "{n}: [B, h]"), "value": ("a: W", "{n}: W"), "output": ("y: h", "{n}: h"),
}


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("payload", PAYLOADS + ["", "y z", "1a", "a.b", "_x"], ids=range(len(PAYLOADS) + 5))
def test_payload_names_are_located_errors(position: str, payload: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch):
    """A name must be an identifier: a payload in any name position is one located error, and nothing runs."""
    monkeypatch.chdir(tmp_path)
    text = textwrap.dedent(RNN)
    old, new = POSITIONS[position]
    assert old in text
    text = text.replace(old, new.replace("{n}", json.dumps(payload)), 1)  # JSON escapes are YAML's
    with pytest.raises(SpecError) as info:
        seqdsl.loads(text, file="x.yaml")
    assert info.value.code == "E0310" and info.value.loc.file == "x.yaml" and info.value.loc.line >= 1, \
        info.value.format()
    assert not (tmp_path / MARKER).exists()


# -------------------------------------------------------------------------------------------- 2. collisions

def _builds(text: str) -> tuple[seqdsl.Model, str]:
    """Load, build both backends (with and without the passes) and check them against each other."""
    model = load_text(text)
    for optimize in (False, True):
        cls = module_class(model, optimize=optimize, native_cells=optimize)
        torch.manual_seed(0)
        _parity(model, cls(), optimize)
    return model, generate(model)


@pytest.mark.parametrize("name", ["zeros", "const", "lstm", "recurrent", "Y", "h_n", "c_n", "x", "W_i", "W_iT",
                                  "Transpose", "Unsqueeze", "Concat", "Squeeze", "Gather", "LSTM"])
def test_a_value_named_like_an_onnx_internal_name_exports(name: str):
    """A spec value named like one of the ONNX builder's own values (the zero filler of a native cell's missing
    bias, constants, a cell's outputs) feeding a recognised LSTM: every internal name comes from the one
    allocator, so nothing is named twice and the export matches PyTorch."""
    _builds(f"""
        sizes: {{d: 3, h: 4}}
        inputs:
          x_in: [B, T, d]
        graph:
          {name}: x_in * 2
          r: LSTM({name})
        modules:
          LSTM:
            sizes: {{d: 3, h: 4}}
            inputs: {{x: [B, T, d]}}
            params:
              W_i, W_f, W_c, W_o: [h, d]
              U_i, U_f, U_c, U_o: [h, h]
              b_i, b_f, b_c, b_o: [h]
            recurrent:
              state: {{h: [B, h], c: [B, h]}}
              step:
                i: sigmoid(W_i @ x + U_i @ h[t-1] + b_i)
                f: sigmoid(W_f @ x + U_f @ h[t-1] + b_f)
                o: sigmoid(W_o @ x + U_o @ h[t-1] + b_o)
                c: f * c[t-1] + i * tanh(W_c @ x + U_c @ h[t-1] + b_c)
                h: o * tanh(c)
            outputs: {{y: h, h_n: final(h)}}
        outputs:
          y: r.y
          z: r.h_n
    """)


@pytest.mark.parametrize("name", ["zeros", "const", "lstm_Y", "lstm_h_n", "W_f", "e", "Transpose"])
def test_the_classifier_with_its_embedding_named_like_an_onnx_internal_name_exports(name: str):
    """specs/classifier.yaml (an LSTM with biases: a native cell with a zero-filled second bias) with its
    embedding renamed: the case a hand-made ``zeros#N`` once collided with the allocator's ``zeros#N``."""
    text = (Path(seqdsl.__file__).parent.parent / "specs" / "classifier.yaml").read_text()
    text = text.replace("  e: embedding(E, tokens)\n  lstm: LSTM(e, h=h)",
                        f"  {name}: embedding(E, tokens) * 2\n  lstm: LSTM({name}, h=h)")
    assert f"LSTM({name}" in text
    model = load_text(text)
    cls = module_class(model, optimize=True, native_cells=True)
    torch.manual_seed(0)
    _parity(model, cls(), True)


@pytest.mark.parametrize("name", ["causal_mask", "padding_mask", "bool", "torch", "F", "nn", "math", "self", "Model",
                                  "super", "h_prev", "x_t", "h_steps", "y_steps", "const"])
def test_a_value_named_like_a_generated_name_builds_right(name: str):
    """Helpers, builtins, module names and the loop's temporaries yield to the spec's names."""
    _, source = _builds(f"""
        sizes: {{d: 3}}
        inputs:
          x: [B, T, d]
          keep: [B, T]
        graph:
          s: x @ transpose(x)
          {name}: softmax(mask(causal(s), keep)) @ x
          r: R({name})
        modules:
          R:
            sizes: {{d: 3, h: 4}}
            inputs: {{x: [B, T, d]}}
            params: {{W: [h, d], U: [h, h]}}
            recurrent:
              state: {{h: [B, h]}}
              step:
                {name}: W @ x
                h: tanh({name} + U @ h[t-1])
            outputs: {{y: h, h_n: final(h), h_l: last(h)}}
        outputs:
          y: r.y
          z: r.h_n
          l: r.h_l
    """)
    assert re.search(rf"\b{name}(_\d+)? = ", source)  # the spec's value, under its name or one made unique


@pytest.mark.parametrize("name", ["h_prev", "x_t", "h_steps", "h_last", "x_by_t", "h_state", "h_init", "lstm_y",
                                  "range", "torch", "self", "loop", "loop_1"])
def test_a_step_value_named_like_a_loop_temporary_builds_right(name: str):
    """The loop method's temporaries (previous state, step slice, per-step list, ...) yield to the step's names."""
    _, source = _builds(f"""
        sizes: {{d: 3, h: 4}}
        inputs: {{x: [B, T, d]}}
        params: {{W: [h, d], U: [h, h]}}
        recurrent:
          state: {{h: [B, h]}}
          step:
            {name}: tanh(W @ x + U @ h[t-1])
            h: {name} * 0.5
        outputs: {{y: h, h_n: final(h), h_l: last(h), v: {name}}}
    """)
    assert re.search(rf"\b{name}(_\d+)? = ", source)


@pytest.mark.parametrize("name", ["inf", "nan", "Infinity", "infinity", "NaN", "e"])
def test_a_value_named_like_a_float_word_is_not_a_number(name: str):
    """model.py tells a number literal from a variable by its form: a value named `inf` stays a variable."""
    _, source = _builds(f"""
        inputs: {{x: [B, 3]}}
        graph:
          {name}: tanh(x)
          y: max(x, {name}) + min({name}, 0.5) + clamp(x, min=-0.5)
          z: where(x, {name}, 2) + where(x, 1, {name})
        outputs: {{y: y, z: z}}
    """)
    assert f"{name} = torch.tanh(x)" in source


def test_a_value_named_bool_in_a_block_that_stops():
    """`bool(done.all())` in model.py is the builtin even when the spec has a value named `bool`."""
    _builds("""
        sizes: {d: 4, n: 5}
        inputs: {v: [B, d]}
        params: {E: [n, d], W: [n, d]}
        recurrent:
          steps: 6
          stop: {when: bool, equals: 1}
          state: {z: [B, n]}
          step:
            e: embedding(E, argmax(z[t-1]))
            z: W @ (e + v)
            bool: argmax(z)
        outputs: {tokens: bool}
    """)


@pytest.mark.parametrize("name", ["reset_parameters", "forward", "state_dict", "training", "parameters", "to",
                                  "input_names", "output_names", "cuda", "type"])
def test_model_attributes_cannot_name_a_call_or_parameter(name: str):
    call = spec_error(f"""
        imports: {{LSTM: std:lstm.yaml}}
        sizes: {{d: 3}}
        inputs: {{x: [B, T, d]}}
        graph:
          {name}: LSTM(x, h=4)
        outputs: {{y: {name}.y}}
    """)
    assert call.code == "E0310" and (call.loc.line, call.loc.col) == (6, 3), call.format()
    param = spec_error(f"""
        inputs: {{x: [B, 3]}}
        params: {{{name}: [3, 3]}}
        graph: {{y: {name} @ x}}
        outputs: {{y: y}}
    """)
    assert param.code == "E0310" and param.loc.line == 3, param.format()


@pytest.mark.parametrize("where", ["params", "inputs", "step", "outputs"])
def test_the_learned_initial_state_is_h_0_and_nothing_else_may_be(where: str):
    spec = """
        sizes: {d: 3, h: 4}
        inputs: {x: [B, T, d]}
        params: {W: [h, d]}
        recurrent:
          state: {h: {shape: [B, h], init: learned}}
          step:
            h: tanh(W @ x + h[t-1])
        outputs: {y: h}
    """
    model, source = _builds(spec)
    assert "h_0" in model.params and "self.h_0 = nn.Parameter" in source
    clash = {"params": ("{W: [h, d]}", "{W: [h, d], h_0: [h]}"),
             "inputs": ("{x: [B, T, d]}", "{x: [B, T, d], h_0: [B, h]}"),
             "step": ("h: tanh(W @ x + h[t-1])", "h_0: tanh(W @ x)\n            h: h_0 + h[t-1]"),
             "outputs": ("{y: h}", "{y: h, h_0: final(h)}")}[where]
    err = spec_error(spec.replace(*clash))
    assert err.code == "E0308" and "learned initial state" in err.message and err.loc.line == 6, err.format()


@pytest.mark.parametrize("outputs, line", [("{x: y}", 5), ("{W: y}", 5), ('{"": y}', 5), ("{y: y, x: W @ x}", 5)])
def test_outputs_named_like_inputs_or_params_or_empty_are_located_errors(outputs: str, line: int):
    err = spec_error(f"""
        inputs: {{x: [B, 3]}}
        params: {{W: [3, 3]}}
        graph: {{y: W @ x}}
        outputs: {outputs}
    """)
    assert err.code in ("E0308", "E0310") and err.loc.line == line, err.format()


def test_names_are_nfkc_normalised_and_two_alike_are_one_error():
    model, source = _builds("""
        sizes: {ｄ: 3}
        inputs: {x: [B, T, d]}
        params: {ﬁ: [ｄ, d]}
        graph: {y: ﬁ @ x}
        outputs: {out: y}
    """)
    assert set(model.params) == {"fi"} and model.sizes == {"d": 3} and "self.fi" in source
    dup = spec_error("""
        inputs: {x: [B, 3]}
        params: {fi: [3, 3], ﬁ: [3, 3]}
        graph: {y: fi @ x}
        outputs: {y: y}
    """)
    assert dup.code == "E0109" and (dup.loc.line, dup.loc.col) == (3, 22) and "NFKC" in dup.message, dup.format()
    across = spec_error("""
        inputs: {x: [B, 3]}
        params: {fi: [3, 3]}
        graph: {ﬁ: fi @ x}
        outputs: {y: ﬁ}
    """)
    assert across.code == "E0308" and across.loc.line == 4, across.format()
    fullwidth = load_text("""
        sizes: {d: 3, h: 4}
        inputs: {x: [B, Ｔ, d]}
        params: {W: [h, d]}
        recurrent:
          over: [ｘ]
          state: {h: {shape: [B, h], init: ｌｅａｒｎｅｄ}}
          step:
            h: tanh(W @ x + h[t-1])
        outputs: {y: h}
    """)
    assert fullwidth.input_nodes()[0].shape == ("B", "T", 3) and "h_0" in fullwidth.params


@pytest.mark.parametrize("expr, code", [("exp(709) * exp(709)", "E0403"), ("x * (exp(400) * exp(400))", "E0403"),
                                        ("x + 1e20 * 1e20", "E0403"), ("-exp(100) * exp(100) * x", "E0403"),
                                        ("exp(709) * exp(709) - exp(709) * exp(709)", "E0403"),
                                        ("dropout(x, 1e31)", "E0302"), ("1e999 + x", "E0302")])
def test_constants_that_overflow_are_located_errors(expr: str, code: str):
    """A constant that is not finite (folded arithmetic; literals are bounded by the parser), or does not fit the
    float32 tensor it meets, is refused where it is written, never written into model.py as a bare `inf`."""
    err = spec_error(f"""
        inputs: {{x: [B, 3]}}
        graph:
          y: {expr}
        outputs: {{y: y}}
    """)
    assert err.code == code and err.loc.line == 4 and err.loc.col >= 6, err.format()
    assert code == "E0302" or "finite" in err.message or "overflows float32" in err.message


def test_constant_arithmetic_is_exact_and_only_its_result_must_fit_float32():
    model, source = _builds("""
        inputs: {x: [B, 3]}
        graph:
          y: x * (exp(100) / exp(99)) + 1e30 / 1e29
        outputs: {y: y}
    """)
    assert "2.718281828459045" in source and "10" in source


def test_generated_methods_never_shadow_nn_module():
    assert {a for a in dir(nn.Module()) if not a.startswith("_")} <= MODULE_ATTRIBUTES
    for spec in sorted(Path(seqdsl.__file__).parent.parent.glob("specs/*.yaml")):
        tree = ast.parse(generate(seqdsl.load(spec)))
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
        methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)} - {"__init__", "reset_parameters"}
        assert not methods & set(dir(nn.Module())) - {"forward"}, spec


# ------------------------------------------------------------------------------------ 3. the hostile pool

_BASES = ["h", "x", "a", "y", "c", "enc"]
POOL = sorted({
    # Python: keywords, soft keywords, builtins, model.py's module-level names, the class and its methods
    "if", "lambda", "None", "match", "case", "bool", "range", "float", "int", "super", "len", "input", "print", "id",
    "type", "self", "torch", "F", "nn", "math", "Model", "causal_mask", "padding_mask", "sinusoidal_positions",
    "dynamic_axes", "native_lstm", "native_gru", "native_rnn_tanh", "native_rnn_relu", "masked_attention", "block",
    "forward", "reset_parameters", "state_dict", "training", "parameters", "to", "eval", "input_names",
    "output_names", "T_destination",
    # seqdsl: reserved names, functions, the compiler's temporaries for every base name
    "B", "T", "t", "T_stop", "tanh", "final", "last", "chunk", "loop", "loop_1", "const", "const_1", "done", "lstm_y",
    "v", "v_1", "mask", "inf", "nan", "Infinity", "where", "clamp",
    *(f"{b}{s}" for b in _BASES for s in ["", "_prev", "_t", "_steps", "_last", "_0", "_init", "_state", "_by_t",
                                          "_kept", "_or_0", "_1", "_tanh", "_add"]),
    # Unicode that Python folds (NFKC), and names that are not identifiers
    "ﬁ", "fi", "ｈ", "ℌ", "Ｔ", "x²", "", "1a", "a b",
})
DEFAULTS = {"spec": "m", "module": "Cell", "input": "x", "param": "W", "cparam": "V", "state": "h", "value": "a",
            "step_out": "y", "final_out": "h_n", "output": "out", "output2": "last_h", "call": "enc", "size": "d",
            "csize": "k"}


def _hostile_spec(n: dict[str, str]) -> str:
    """A model calling a recurrent module, every name taken from ``n`` (written as JSON, which is YAML)."""
    doc = {
        "name": n["spec"],
        "sizes": {n["size"]: 3},
        "inputs": {n["input"]: ["B", "T", n["size"]]},
        "params": {n["param"]: [n["size"], n["size"]]},
        "modules": {n["module"]: {
            "sizes": {n["csize"]: 3},
            "inputs": {n["input"]: ["B", "T", n["csize"]]},
            "params": {n["cparam"]: [n["csize"], n["csize"]]},
            "recurrent": {
                "state": {n["state"]: {"shape": ["B", n["csize"]], "init": "learned"}},
                "step": {n["value"]: f"{n['cparam']} @ {n['input']}",
                         n["state"]: f"tanh({n['value']} + {n['state']}[t-1])"}},
            "outputs": {n["step_out"]: n["state"], n["final_out"]: f"final({n['state']})"}}},
        "graph": {n["call"]: f"{n['module']}({n['param']} @ {n['input']})"},
        "outputs": {n["output"]: f"{n['call']}.{n['step_out']}", n["output2"]: f"{n['call']}.{n['final_out']}"},
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


@st.composite
def hostile_names(draw: st.DrawFn) -> dict[str, str]:
    return {k: draw(st.one_of(st.just(v), st.sampled_from(POOL))) for k, v in DEFAULTS.items()}


@settings(max_examples=400 if LONG else 40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=hostile_names(), optimize=st.booleans())
def test_hostile_names_build_right_or_fail_located(names: dict[str, str], optimize: bool):
    text = _hostile_spec(names)
    try:
        model = seqdsl.loads(text, file="hostile.yaml")
    except SpecError as err:
        assert err.loc.file == "hostile.yaml" and err.loc.line >= 1 and err.code.startswith("E"), err.format()
        return
    source = generate(passes.optimize(model) if optimize else model)
    _check_model_py(source, methods={n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)
                                     and n.name.startswith("_") and n.name not in ("__init__", "_forward")})
    net = module_class(model, optimize=optimize, native_cells=optimize)()
    assert set(net.state_dict()) == set(model.params)
    assert net.input_names == tuple(model.inputs) and net.output_names == tuple(model.graph.outputs)
    _parity(model, net, optimize)
