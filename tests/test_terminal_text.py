"""Text from a file never drives the terminal: whatever a spec (or its file name) quotes, every error and warning the
command line prints carries no control, bidi-override or line-break character, and no line a file could forge."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from seqdsl import cli
from seqdsl.errors import Location, SpecError
from seqdsl.text import printable, terminal_text

FORGED = "fake.yaml:9:9: error[E0999]: forged"
UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
CONTROLS = [chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]]  # C0, DEL, C1
SPECIAL = [*CONTROLS, "\x1b[2J", "\x1b]0;pwned\x07", "\x1b[31m", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
           "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\u061c", "\u200b", "\ufeff", "\u2028",
           "\u2029", f"\n{FORGED}\n", f"\r{FORGED}", f"\n   = help: {FORGED}"]
PAYLOAD = st.lists(st.one_of(st.sampled_from(SPECIAL), st.text("abc_é", min_size=1, max_size=3)),
                   min_size=1, max_size=5).map("".join).filter(lambda s: any(c in s for c in "".join(SPECIAL)))

# where a spec's text reaches a message: {S} is the payload, written as a YAML double-quoted string
SITES = {
    "value name": "graph:\n  {S}: x\n",
    "parameter name": "params:\n  {S}: [4, 4]\ngraph:\n  z: x\n",
    "unknown key": "{S}: 1\ngraph:\n  z: x\n",
    "equation": "graph:\n  z: {S}\n",
    "import path": "imports:\n  M: {S}\ngraph:\n  z: x\n",
    "size": "sizes: {{d: {S}}}\ngraph:\n  z: x\n",
    "model name": "name: {S}\ngraph:\n  z: x\n",
    "input dtype": "graph:\n  z: x\n",
}
HEAD = "inputs:\n  x: [B, T, 4]\n"
TAIL = "outputs:\n  y: x\n"


def _check_output(text: str, spec: Path) -> None:
    bad = sorted({f"U+{ord(c):04X}" for c in text if c != "\n" and unicodedata.category(c) in UNSAFE})
    assert not bad, (bad, text)
    lines = text.split("\n")
    assert not [line for line in lines if line.lstrip().startswith("fake.yaml")], text
    assert "Traceback" not in text
    diagnostic = re.compile(r"^\S.*:\d+:\d+: (error|warning)\[")
    for line in lines:
        if diagnostic.match(line):  # a diagnostic's first line names the spec, as the escaping writes its path
            assert line.startswith(printable(str(spec))), (line, text)


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli.app, list(args))
    assert result.exit_code in (0, 2), result.output
    return result.output


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(site=st.sampled_from(sorted(SITES)), payload=PAYLOAD, comment=PAYLOAD)
def test_a_spec_quoting_control_characters_prints_none(tmp_path: Path, site: str, payload: str, comment: str):
    body = SITES[site].format(S=json.dumps(payload))
    if site == "input dtype":
        body = body.replace("graph:", f"  w: {{shape: [B, T, 4], dtype: {json.dumps(payload)}}}\ngraph:")
    # raw bidi and zero-width characters are legal YAML: on the error line's comment they reach the excerpt
    raw = "".join(c for c in comment if unicodedata.category(c) == "Cf")
    body = body.replace("\n", f"  # {raw}\n", 1) if raw and not body.startswith("{") else body
    spec = tmp_path / "m.yaml"
    spec.write_text(HEAD + body + TAIL, encoding="utf-8")
    _check_output(_run("validate", str(spec)), spec)


FILE_CHARS = [c for c in SPECIAL if "/" not in c and "\x00" not in c]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.lists(st.sampled_from([*FILE_CHARS, "a", "é"]), min_size=1, max_size=4).map("".join),
       broken=st.booleans())
def test_a_file_name_with_control_characters_prints_none(tmp_path: Path, name: str, broken: bool):
    folder = tmp_path / "specs"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    spec = folder / f"{name}.yaml"
    graph = "  z: hiden\n" if broken else "  spare: x * 2\n"  # an error, or a warning (W0401) and the ok line
    spec.write_text("name: m\n" + HEAD + "graph:\n" + graph + TAIL, encoding="utf-8")
    text = _run("validate", str(folder))
    assert ("error[E0301]" in text) if broken else ("warning[W0401]" in text and ": ok" in text)
    _check_output(text, spec)


@given(st.lists(st.sampled_from([*SPECIAL, "a", " ", "é", "\\"]), max_size=12).map("".join))
def test_printable_escapes_exactly_the_unsafe_characters(text: str):
    shown = printable(text)
    assert not [c for c in shown if unicodedata.category(c) in UNSAFE]
    if not [c for c in text if unicodedata.category(c) in UNSAFE]:
        assert shown == text  # nothing else changes: names in other scripts stay readable
    rendered = terminal_text(f"x: {text}\n   = help: {text}")
    assert not [c for c in rendered if c != "\n" and unicodedata.category(c) in UNSAFE]
    assert all(line.startswith(" ") for line in rendered.split("\n")[1:]) and "\n   = help: " in rendered


IN_LINE = [c for c in SPECIAL if len(f"a{c}b".splitlines()) == 1 and "\t" not in c]  # what one line can hold


@given(st.lists(st.sampled_from([*IN_LINE, "a", "b"]), min_size=1, max_size=6).map("".join), st.data())
def test_the_caret_stays_under_the_quoted_text_when_the_line_is_escaped(text: str, data: st.DataObject):
    line = f"  y: f({text})  # {text}"
    col = data.draw(st.integers(1, len(line)))
    length = data.draw(st.integers(1, len(line) - col + 1))
    err = SpecError("E0301", "x", Location("m.yaml", 3, col, length=length))
    shown, caret = err.format(f"\n\n{line}\n").split("\n")[1:3]
    shown, caret = shown[shown.index("|") + 2:], caret[caret.index("|") + 2:]
    assert shown == printable(line)
    start = caret.index("^")
    assert shown[:start] == printable(line[:col - 1])
    assert shown[start:len(caret)] == printable(line[col - 1:col - 1 + length])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=PAYLOAD)
def test_run_prints_the_output_names_of_any_onnx_file_escaped(tmp_path: Path, payload: str):
    """`seqdsl run` takes any .onnx file: the output names it prints (and the files it writes for them) are the
    file's text, shown escaped."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    name = payload.replace("\x00", "")  # protobuf strings may hold anything but onnxruntime's C API stops at NUL
    graph = helper.make_graph([helper.make_node("Identity", ["x"], [name])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
    np.save(tmp_path / "x.npy", np.ones(2, np.float32))
    text = _run("run", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", str(tmp_path / "out"))
    assert not {c for c in text if c != "\n" and unicodedata.category(c) in UNSAFE}, text
    assert not [line for line in text.split("\n") if line.lstrip().startswith("fake.yaml")], text
    assert printable(name) in text
