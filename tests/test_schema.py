"""The schema as editors see it (JSON Schema) and as users meet it (located messages)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import SPECS, spec_error

from seqdsl.schema import json_schema

SCHEMA_FILE = SPECS / "seqdsl.schema.json"


def test_committed_schema_is_current():
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), "regenerate: seqdsl schema > specs/seqdsl.schema.json"


@pytest.mark.parametrize("spec", sorted(SPECS.rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_validates_and_points_editors_at_the_schema(spec):
    text = spec.read_text()
    assert text.startswith("# yaml-language-server: $schema="), "first line tells editors where the schema is"
    target = (spec.parent / text.splitlines()[0].split("$schema=", 1)[1].strip()).resolve()
    assert target == SCHEMA_FILE.resolve()
    jsonschema.validate(yaml.safe_load(text), json_schema())


@pytest.mark.parametrize("bad", [
    {"inputs": {"x": ["B", "T", 4]}, "graph": {"y": "x"}},                                  # no outputs
    {"inputs": {"x": ["B", "T", 4]}, "graph": {"y": "x"}, "outputs": {"y": "y"}, "extra": 1},  # unknown key
    {"inputs": {"x": 5}, "graph": {"y": "x"}, "outputs": {"y": "y"}},                       # not a shape
    {"inputs": {"x": ["B", "T", 4]}, "recurrent": {"step": {"h": "x"}}, "outputs": {"y": "h"}},  # no state
    {"inputs": {"x": ["B", 4]}, "params": {"W": {"shape": [4, 4], "init": "zero"}}, "graph": {"y": "x"},
     "outputs": {"y": "y"}},                                                                 # init not allowed
])
def test_schema_rejects_known_bad_specs(bad):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json_schema())


@pytest.mark.parametrize("text, code, line, col, words", [
    ("inputs: {x: [B, T, 4]}\nparams:\n  W: {shape: [4, 4], int: zeros}\ngraph: {y: W @ x}\noutputs: {y: y}\n",
     "E0201", 3, 22, "did you mean `init`?"),
    ("inputs: {x: [B, T, 4]}\nrecurrent:\n  state:\n    h: {shape: [B, 4], inti: zeros}\n  step: {h: x}\n"
     "outputs: {y: h}\n", "E0201", 4, 24, "did you mean `init`?"),
    ("inputs:\n  x: {shape: 4}\ngraph: {y: x}\noutputs: {y: y}\n", "E0203", 2, 14, "a list such as [B, T, d]"),
    ("inputs:\n  x: 5\ngraph: {y: x}\noutputs: {y: y}\n", "E0203", 2, 6, "shape list"),
    ("inputs: {x: [B, T, 4]}\nparams:\n  W: {shape: [4, 4], init: zero}\ngraph: {y: W @ x}\noutputs: {y: y}\n",
     "E0203", 3, 28, "did you mean `zeros`?"),
    ("inputs: {x: [B, T, 4]}\ngraph: {y: x}\n", "E0202", 1, 1, "outputs"),
    ("inputs: {x: [B, T, 4]}\ngrahp: {y: x}\noutputs: {y: y}\n", "E0201", 2, 1, "did you mean `graph`?"),
])
def test_schema_errors_are_located(text, code, line, col, words):
    err = spec_error(text)
    assert (err.code, err.loc.line, err.loc.col) == (code, line, col)
    assert words in err.format()


# ------------------------------------------------------------------- editors: descriptions and precise errors

def _properties(node, path="$"):
    """Every (path, property schema) under any `properties` of the schema."""
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            yield f"{path}.{key}", value
        for key, value in node.items():
            yield from _properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _properties(value, f"{path}[{i}]")


def test_every_property_has_a_description_from_the_key_reference():
    from seqdsl.spec_keys import KEYS

    props = list(_properties(json_schema()))
    assert len(props) >= 30
    for where, prop in props:
        assert prop.get("description"), f"{where} has no description"
        assert prop["description"] in {k.text for k in KEYS.values()}, f"{where}: not from seqdsl.spec_keys"
    recurrent = json_schema()["$defs"]["Recurrent"]["properties"]
    assert "h[t-1]" in recurrent["step"]["description"]
    assert {"h": "tanh(W @ x + U @ h[t-1] + b)"} in recurrent["step"]["examples"]


def test_examples_in_the_schema_are_valid_specs_parts():
    """An example an editor offers must itself pass the schema: each one is put into a spec that validates."""
    schema = json_schema()
    base = {"inputs": {"x": ["B", "T", 4]}, "graph": {"y": "x"}, "outputs": {"y": "y"}}
    for key, prop in schema["$defs"]["GraphModule"]["properties"].items():
        for example in prop.get("examples", []):
            if key != "kind":
                jsonschema.validate({**base, key: example}, schema)
    step = {"inputs": {"x": ["B", "T", 4]}, "outputs": {"y": "h"},
            "recurrent": {"state": {"h": ["B", 4]}, "step": {"h": "x"}}}
    for key, prop in schema["$defs"]["Recurrent"]["properties"].items():
        for example in prop.get("examples", []):
            jsonschema.validate({**step, "recurrent": {**step["recurrent"], key: example}}, schema)


BROKEN = {  # file: (text, the JSON path check-jsonschema must name, a word of its message, seqdsl's line:col,
    #          what seqdsl's own message must say)
    "step_misspelt.yaml": ("inputs: {x: [B, T, 4]}\nrecurrent:\n  state: {h: [B, 4]}\n  stpe:\n    h: tanh(x)\n"
                           "outputs: {y: h}\n", "$.recurrent", "'stpe' was unexpected", (4, 3),
                           "`step`, `steps`, `stop`"),
    "state_init_misspelt.yaml": ("inputs: {x: [B, T, 4]}\nrecurrent:\n  state:\n    h: {shape: [B, 4], inti: zeros}\n"
                                 "  step: {h: x}\noutputs: {y: h}\n", "$.recurrent.state.h", "'inti' was unexpected",
                                 (4, 24), "did you mean `init`?"),
    "stop_misspelt.yaml": ("inputs: {x: [B, 4]}\nrecurrent:\n  steps: 3\n  stop: {when: x, eqals: 2}\n"
                           "  state: {h: [B, 4]}\n  step: {h: x}\noutputs: {y: h}\n", "$.recurrent.stop",
                           "'eqals' was unexpected", (4, 19), "did you mean `equals`?"),
    "direction_wrong.yaml": ("inputs: {x: [B, T, 4]}\nrecurrent:\n  state: {h: [B, 4]}\n  step: {h: x}\n"
                             "  direction: backward\noutputs: {y: h}\n", "$.recurrent.direction", "'backward'",
                             (5, 14), "'forward' or 'reverse'"),
    "dtype_misspelt.yaml": ("inputs:\n  x: {shape: [B, T, 4], dtyp: int64}\ngraph: {y: x}\noutputs: {y: y}\n",
                            "$.inputs.x", "'dtyp' was unexpected", (2, 25), "did you mean `dtype`?"),
    "param_init_wrong.yaml": ("inputs: {x: [B, 4]}\nparams:\n  W: {shape: [4, 4], init: zero}\ngraph: {y: W @ x}\n"
                              "outputs: {y: y}\n", "$.params.W.init", "'zero'", (3, 28), "did you mean `zeros`?"),
    "nested_module.yaml": ("inputs: {x: [B, T, 4]}\nmodules:\n  Cell:\n    inputs: {x: [B, T, 4]}\n    recurrent:\n"
                           "      state: {h: [B, 4]}\n      step: {h: x}\n      decodr: {y: h}\n    outputs: {y: h}\n"
                           "graph: {c: Cell(x)}\noutputs: {y: c}\n", "$.modules.Cell.recurrent",
                           "'decodr' was unexpected", (8, 7), "did you mean `decoder`?"),
    "state_not_a_shape.yaml": ("inputs: {x: [B, T, 4]}\nrecurrent:\n  state: {h: 5}\n  step: {h: x}\n"
                               "outputs: {y: h}\n", "$.recurrent.state.h", "5 is not of type", (3, 14), "shape list"),
    "top_misspelt.yaml": ("inputs: {x: [B, T, 4]}\ngrahp: {y: x}\noutputs: {y: y}\n", "$",
                          "'grahp' was unexpected", (2, 1), "did you mean `graph`?"),
}


def _check_jsonschema(*files: Path) -> list[dict]:
    import shutil
    import subprocess

    exe = shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is in the test extra: pip install -e .[test]"
    run = subprocess.run([exe, "--schemafile", str(SCHEMA_FILE), "-o", "json", *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    report = json.loads(run.stdout)
    assert not report.get("parse_errors"), report
    assert (run.returncode == 0) == (report["status"] == "ok")
    return report["errors"]


def test_check_jsonschema_passes_every_shipped_spec():
    assert _check_jsonschema(*sorted(SPECS.rglob("*.yaml"))) == []


def test_check_jsonschema_names_the_nested_key_of_each_broken_spec(tmp_path: Path):
    for name, (text, *_rest) in BROKEN.items():
        (tmp_path / name).write_text(text)
    errors = _check_jsonschema(*(tmp_path / name for name in BROKEN))
    for name, (_text, path, words, _where, _says) in BROKEN.items():
        mine = [e for e in errors if Path(e["filename"]).name == name]
        assert mine, f"{name}: no error"
        first = mine[0]
        assert (first["path"], words in first["message"]) == (path, True), (name, mine)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_seqdsl_points_at_the_same_key(name: str):
    text, path, _words, (line, col), says = BROKEN[name]
    err = spec_error(text)
    assert err.code in ("E0201", "E0203"), err.format()
    assert (err.loc.line, err.loc.col) == (line, col), err.format()
    assert says in err.format(), err.format()
    assert path.removeprefix("$").lstrip(".") in err.loc.path, err.format()  # `= in:` names the same key


def test_readme_key_table_is_the_generated_one():
    from conftest import ROOT
    from seqdsl.spec_keys import key_reference

    assert key_reference() in (ROOT / "README.md").read_text(), "regenerate: seqdsl explain --keys, into README"


def test_explain_a_key_a_function_and_a_code():
    from typer.testing import CliRunner

    from seqdsl import cli
    from seqdsl.spec_keys import KEYS

    run = CliRunner()
    r = run.invoke(cli.app, ["explain", "recurrent.state.h.init"])  # a user's state name may be in the path
    assert r.exit_code == 0 and r.output.startswith(f"recurrent.state.h.init: {KEYS['recurrent.state.init'].text}")
    assert 'e.g. "learned"' in r.output
    r = run.invoke(cli.app, ["explain", "recurrent.stop"])
    assert "keys inside: when, equals" in r.output
    r = run.invoke(cli.app, ["explain", "clamp"])
    assert r.exit_code == 0 and "min=lo, max=hi" in r.output
    r = run.invoke(cli.app, ["explain", "E0201"])
    assert r.exit_code == 0 and "unknown key" in r.output
    r = run.invoke(cli.app, ["explain", "recurent.step"])
    assert r.exit_code == 2 and "did you mean `recurrent.step`?" in r.output
