"""The schema as editors see it (JSON Schema) and as users meet it (located messages)."""

from __future__ import annotations

import json

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
