"""What a well-kept command line does, as a user meets it: --version, shell completion, validate over many files,
progress on a terminal only, and build outputs that say where they came from and what they hold."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pty
import subprocess
import sys
import threading
import tomllib
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import seqdsl
from seqdsl.compilers.build import build
from seqdsl.compilers.build_record import RECURRENT_OPS, onnx_forms
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_runtime import make_session
from seqdsl.compilers.torch_module import to_module
from conftest import ROOT, SPECS
from seqdsl.text import MAX_DOC_CHARS, plain_text

SHIPPED = sorted(p for p in SPECS.glob("*.yaml"))
EXAMPLES = 300 if os.environ.get("SEQDSL_LONG_TESTS") else 40


def seqdsl_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, **(env or {})})


# ------------------------------------------------------------------------------------------- version

def test_version_is_single_sourced_from_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert seqdsl.__version__ == declared
    r = seqdsl_cli("--version")
    assert (r.returncode, r.stdout) == (0, f"seqdsl {declared}\n")
    try:  # an installed copy's metadata is written from the same pyproject
        installed = importlib.metadata.version("seqdsl")
    except importlib.metadata.PackageNotFoundError:
        return
    assert installed == declared


# ---------------------------------------------------------------------------------------- completion

def test_shell_completion_completes_commands_and_options_in_bash(tmp_path: Path):
    """What README tells a bash user to do, end to end: source `seqdsl --show-completion bash`, press tab."""
    wrapper = tmp_path / "seqdsl"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "cli.py"}" "$@"\n')
    wrapper.chmod(0o755)
    script = ('eval "$(seqdsl --show-completion bash)"\n'
              'COMP_WORDS=(seqdsl va); COMP_CWORD=1; _seqdsl_completion seqdsl; echo "1:${COMPREPLY[*]}"\n'
              'COMP_WORDS=(seqdsl build --unr); COMP_CWORD=2; _seqdsl_completion seqdsl; echo "2:${COMPREPLY[*]}"\n')
    r = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    assert "1:validate" in r.stdout.splitlines() and "2:--unroll" in r.stdout.splitlines(), r.stdout


# ---------------------------------------------------------------------------------- validate, many

def test_validate_reports_each_file_and_exits_2_if_any_failed(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((SPECS / "rnn.yaml").read_text().replace("+ b)", "+ bb)"))
    missing = tmp_path / "missing.yaml"
    r = seqdsl_cli("validate", str(SPECS / "lstm.yaml"), str(bad), str(SPECS / "gru.yaml"), str(missing))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{SPECS / 'lstm.yaml'}: ok — lstm, 6,272 parameters")
    assert lines[1].startswith(f"{SPECS / 'gru.yaml'}: ok — gru")
    assert lines[-1] == "2 of 4 specs ok, 2 failed"
    assert f"{bad}:15:34: error[E0301]: unknown name `bb`" in r.stderr
    assert "error[E0118]" in r.stderr and "missing.yaml" in r.stderr


def test_validate_a_folder_checks_every_spec_in_it():
    r = seqdsl_cli("validate", str(SPECS))
    assert r.returncode == 0, r.stderr
    expected = sorted(SPECS.rglob("*.yaml"))
    ok = [line for line in r.stdout.splitlines() if ": ok — " in line]
    assert [line.split(": ok — ")[0] for line in ok] == [str(p) for p in expected]  # one line each, unwrapped
    assert r.stdout.splitlines()[-1] == f"{len(expected)} of {len(expected)} specs ok"


def test_validate_an_empty_folder_is_a_usage_error(tmp_path: Path):
    r = seqdsl_cli("validate", str(tmp_path))
    assert r.returncode == 2 and "no .yaml spec files" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------- progress

def _run_with_terminal_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (as in a shell) and stdout piped."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], stdout=subprocess.PIPE, stderr=slave,
                            cwd=ROOT, env=env)
    os.close(slave)
    stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


def test_build_shows_progress_on_a_terminal(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    code, stdout, terminal = _run_with_terminal_stderr(
        ["build", str(SPECS / "rnn.yaml"), "--set", "h=4", "--seq-len", "3", "-o", str(tmp_path / "tty")], env)
    assert code == 0, terminal
    from seqdsl.compilers.build import STAGES

    for stage in STAGES:  # every stage is shown, with how far the build is
        assert f"building: {stage}" in terminal
    assert f"{STAGES.index('exporting ONNX')}/{len(STAGES)}" in terminal and "\x1b[" in terminal
    assert "parameters" in stdout  # the result still goes to stdout


def test_no_progress_under_ci_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch):
    from seqdsl import cli

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.delenv("CI", raising=False)
    assert cli._interactive()
    monkeypatch.setenv("CI", "true")
    assert not cli._interactive()


def test_piped_build_prints_plain_lines_and_no_progress(tmp_path: Path):
    from typer.testing import CliRunner

    from seqdsl import cli

    out = tmp_path / "pipe"
    result = CliRunner().invoke(cli.app, ["build", str(SPECS / "rnn.yaml"), "--set", "h=4", "--seq-len", "3",
                                          "--onnx-form", "native", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output and "│" not in result.output and "building" not in result.output
    lines = result.output.splitlines()
    assert lines[0] == f"rnn → {out}"
    assert f"  parameters: {4 * (16 + 4 + 1)}" in lines  # h (d + h + 1): W, U, b
    assert any(line.startswith("  onnx: recurrent RNN; runs at any length (") for line in lines), lines


# ---------------------------------------------------------------------------------- build.json

def test_build_json_records_provenance(tmp_path: Path):
    result = build(SPECS / "deep_lstm.yaml", tmp_path / "d", sizes={"h": 4, "depth": 2}, steps=3, seed=5)
    record = json.loads((tmp_path / "d" / "build.json").read_text())
    prov = record["provenance"]
    assert prov == result.provenance
    assert {k: prov[k] for k in ("seqdsl", "torch", "onnx", "onnxruntime")} == {
        "seqdsl": seqdsl.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__}
    written = onnx.load(str(tmp_path / "d" / "model.onnx"))
    assert prov["opset"] == written.opset_import[0].version and prov["ir_version"] == written.ir_version
    assert prov["spec"] == {"file": "deep_lstm.yaml",
                            "sha256": hashlib.sha256((SPECS / "deep_lstm.yaml").read_bytes()).hexdigest()}
    assert prov["imports"] == {"lstm.yaml": hashlib.sha256((SPECS / "lstm.yaml").read_bytes()).hexdigest()}
    assert prov["sizes"] == {"d": 8, "h": 4, "depth": 2} and prov["seed"] == 5
    assert str(ROOT) not in json.dumps(prov)  # no path of this machine


def test_build_json_onnx_form_says_what_the_file_holds(tmp_path: Path):
    native = build(SPECS / "lstm.yaml", tmp_path / "n", sizes={"h": 4}, steps=3)
    assert (native.onnx_form, native.onnx_blocks) == ("LSTM", {"recurrent": "LSTM"})
    ops = {n.op_type for n in onnx.load(str(tmp_path / "n" / "model.onnx")).graph.node}
    assert "LSTM" in ops and "Scan" not in ops
    plain = build(SPECS / "lstm.yaml", tmp_path / "p", sizes={"h": 4}, steps=3, optimize_passes=False)
    assert (plain.onnx_form, plain.onnx_blocks) == ("Scan", {"recurrent": "Scan"})
    unrolled = build(SPECS / "seq2seq.yaml", tmp_path / "u", steps=3, unroll=True, axis_lengths={"S": 4})
    assert (unrolled.onnx_form, unrolled.onnx_blocks) == ("unrolled", {"enc": "unrolled", "dec": "unrolled"})
    assert json.loads((tmp_path / "u" / "build.json").read_text())["onnx_form"] == "unrolled"


def _recurrent_op_types(graph: onnx.GraphProto) -> Counter[str]:
    found: Counter[str] = Counter()
    for node in graph.node:
        found[node.op_type] += node.op_type in RECURRENT_OPS
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found += _recurrent_op_types(sub)
    return +found


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[seqdsl.Model, onnx.ModelProto]]:
    out = {}
    for path in SHIPPED:
        model = seqdsl.load(path)
        out[path.stem] = (model, export(model))
    return out


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_onnx_form_of_every_shipped_spec_matches_its_nodes(spec: Path, exported):
    model, proto = exported[spec.stem]
    forms = onnx_forms(proto, model)
    loops = [n for n in seqdsl.ir.all_nodes(model.graph) if n.op == "loop"]
    assert len(forms) == len(loops)  # one entry per recurrent block of the spec
    assert Counter(forms.values()) == _recurrent_op_types(proto.graph)


EXPECTED_FORMS = {
    "lstm": {"recurrent": "LSTM"}, "gru": {"recurrent": "GRU"}, "rnn": {"recurrent": "RNN"},
    "lstm_peephole": {"recurrent": "LSTM"}, "lstm_cifg": {"recurrent": "LSTM"}, "irnn": {"recurrent": "RNN"},
    "hypernetwork_rnn": {"recurrent": "Scan"}, "generator": {"gen": "Loop"}, "transformer": {},
    "seq2seq_attention": {"enc.fw": "GRU", "enc.bw": "GRU", "dec": "Scan"},
    "bilstm": {"bi.fw": "LSTM", "bi.bw": "LSTM"},
}


@pytest.mark.parametrize("stem", sorted(EXPECTED_FORMS))
def test_onnx_form_names_each_block(stem: str, exported):
    model, proto = exported[stem]
    assert onnx_forms(proto, model) == EXPECTED_FORMS[stem]


# ---------------------------------------------------------------------------------- model.onnx

def _names_read(graph: onnx.GraphProto) -> set[str]:
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                read |= _names_read(sub)
    return read


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_no_initializer_is_unused(spec: Path, exported):
    _, proto = exported[spec.stem]
    read = _names_read(proto.graph)
    assert [i.name for i in proto.graph.initializer if i.name not in read] == []


@settings(max_examples=EXAMPLES, deadline=None)
@given(terms=st.lists(st.sampled_from([
    "x * sqrt(d)", "x / sqrt(k)", "clamp(x, min=-1, max=2)", "min(x, k) + max(1, x)", "where(x, 2, x) * log(k)",
    "x * exp(0) - abs(-k)", "gelu(x) * (d - k)", "leaky_relu(x, 0.1) + softplus(k) * x", "W @ x", "x + b",
    "elu(x) * min(d, k)", "silu(x) / (k * 2)"]), min_size=1, max_size=5))
def test_no_unused_initializer_whatever_constants_fold(terms: list[str]):
    """The class of the pre-LN transformer's stray initializer: constants folded away in lowering (`sqrt(d)`) left
    the numbers they were folded from behind. Whatever mix of numbers, sizes and parameters: nothing unread."""
    model = seqdsl.loads(f"""
sizes: {{d: 4, k: 2}}
inputs: {{x: [B, d]}}
params: {{W: [d, d], b: [d], unused: [d]}}
graph:
  y: {" + ".join(f"({t})" for t in terms)}
outputs: {{y: y}}
""")
    proto = export(model)
    read = _names_read(proto.graph)
    assert [i.name for i in proto.graph.initializer if i.name not in read] == []
    net = to_module(model)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})  # `unused` is accepted
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    session, _ = make_session(proto.SerializeToString(), "cpu")
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_set_weights_still_refuses_unknown_and_missing_weights():
    model = seqdsl.loads("inputs: {x: [B, 4]}\nparams: {W: [4, 4], V: [4]}\ngraph: {y: W @ x}\noutputs: {y: y}\n")
    proto = export(model)
    assert [p.value for p in proto.metadata_props if p.key == "seqdsl.unread_parameters"] == ["V"]
    with pytest.raises(KeyError, match=r"unknown \['Q'\]"):
        set_weights(proto, {"W": np.zeros((4, 4), np.float32), "V": np.zeros(4, np.float32),
                            "Q": np.zeros(4, np.float32)})
    with pytest.raises(KeyError, match=r"missing \['W'\]"):
        set_weights(proto, {"V": np.zeros(4, np.float32)})


HOSTILE_DOC = "An LSTM.\u202eevil\u202c\x1b[31mred\x07\r\nsecond line\u200b   \n" + "x" * 10_000


def test_model_onnx_carries_producer_spec_name_and_doc(tmp_path: Path):
    spec = tmp_path / "documented.yaml"
    spec.write_text((SPECS / "rnn.yaml").read_text().replace("name: rnn", f"name: rnn\ndoc: {json.dumps(HOSTILE_DOC)}"))
    build(spec, tmp_path / "out", sizes={"h": 4}, steps=3)
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert (proto.producer_name, proto.producer_version) == ("seqdsl", seqdsl.__version__)
    assert proto.graph.name == "rnn"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["seqdsl.spec"] == "rnn" and meta["seqdsl.spec_file"] == "documented.yaml"
    assert meta["seqdsl.spec_sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    doc = proto.graph.doc_string
    assert doc.startswith("An LSTM.evil[31mred\nsecond line\nxxx") and len(doc) == MAX_DOC_CHARS
    assert "rnn: generated by seqdsl" in proto.doc_string


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(st.text(max_size=300), st.integers(2, 200))
def test_plain_text_is_printable_bounded_and_stable(text: str, limit: int):
    out = plain_text(text, limit)
    assert len(out) <= limit
    assert all(c in "\n\t" or unicodedata.category(c) not in {"Cc", "Cf", "Cs", "Co", "Cn"} for c in out)
    assert "\r" not in out
    assert plain_text(out, limit) == out or out.endswith("…")
