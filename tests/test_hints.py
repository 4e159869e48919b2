"""What a newcomer is told: a bidirectional call warns exactly as the forward one, a missing delay is pointed at
where it is missing, and "did you mean" counts a transposition as one edit (one rule, `seqdsl.suggest`)."""

from __future__ import annotations

import re
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seqdsl
from conftest import SPECS
from seqdsl.errors import SpecError, SpecErrors, did_you_mean
from seqdsl.schema import _SECTION_MODELS, _allowed_keys
from seqdsl.spec_keys import KEYS
from seqdsl.suggest import closest, edit_distance


def _warnings(text: str) -> list[tuple[int, int, str]]:
    model = seqdsl.loads(text, file="x.yaml")
    return sorted((w.loc.line, w.loc.col, w.message) for w in model.warnings)


# -- W0401 and direction=both


@pytest.mark.parametrize("spec", [p for p in sorted(SPECS.glob("*.yaml")) if "direction=both" in p.read_text()],
                         ids=lambda p: p.stem)
def test_shipped_bidirectional_specs_warn_as_their_forward_call(spec):
    text = spec.read_text()
    both = seqdsl.loads(text, file=str(spec))
    given = {n for s in both.scopes.values() for n in s.outputs}
    assert given and not [w for w in both.warnings if w.message.split("`")[1] in given]
    try:  # where the forward call fits the rest of the spec (half the width)
        forward = seqdsl.loads(text.replace("direction=both", "direction=forward"), file=str(spec))
    except SpecError:
        return
    assert [w.format() for w in both.warnings] == [w.format() for w in forward.warnings]


CALLEES = {"rnn": ("y", "h_n"), "gru": ("y", "h_n"), "lstm": ("y", "h_n", "c_n"), "gru_torch": ("y", "h_n")}


@settings(max_examples=25, deadline=None)
@given(callee=st.sampled_from(sorted(CALLEES)), repeat=st.sampled_from(["", ", repeat=1", ", repeat=2"]),
       data=st.data(), extra=st.booleans())
def test_a_bidirectional_call_warns_exactly_when_the_forward_one_does(callee, repeat, data, extra):
    outputs = CALLEES[callee]
    read = data.draw(st.lists(st.sampled_from(outputs), min_size=1, max_size=len(outputs), unique=True))
    lines = "".join(f"  o{i}: m.{k}\n" for i, k in enumerate(read))
    spec = textwrap.dedent(f"""\
        name: drawn
        imports:
          Cell: std:{callee}.yaml
        sizes: {{d: 3, h: 4}}
        inputs:
          x: [B, T, d]
        graph:
          m: Cell(x, h=h{repeat}, direction=DIR)
        """) + ("  spare: x * 2\n" if extra else "") + "outputs:\n" + lines
    forward, both = (_warnings(spec.replace("DIR", d)) for d in ("forward", "both"))
    assert both == forward
    assert [m for *_, m in both] == (["value `spare` is never used"] if extra else [])


# -- E0402: the read that lacks its delay

LSTM_STEP = {"f": "sigmoid", "i": "sigmoid", "o": "sigmoid", "c": "tanh"}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_missing_delay_is_pointed_at_where_it_is_missing(data):
    bare = data.draw(st.lists(st.booleans(), min_size=4, max_size=4).filter(any))
    gates = data.draw(st.permutations(["f", "i", "o"]))
    lines = []
    for g in [*gates, "c"]:
        recur = f"U_{g} @ {'h' if bare[len(lines)] else 'h[t-1]'}"
        terms = data.draw(st.permutations([f"W_{g} @ x", recur, f"b_{g}"]))
        space = data.draw(st.sampled_from([" ", "  "]))
        body = f"{space}+{space}".join(terms)
        lines.append(f"    {g}: sigmoid({body})" if g != "c" else f"    c: f * c[t-1] + i * tanh({body})")
    lines.append("    h: o * tanh(c)")
    spec = textwrap.dedent("""\
        name: lstm
        sizes: {d: 3, h: 4}
        inputs:
          x: [B, T, d]
        params:
          W_f, W_i, W_o, W_c: [h, d]
          U_f, U_i, U_o, U_c: [h, h]
          b_f, b_i, b_o, b_c: [h]
        recurrent:
          state:
            h: [B, h]
            c: [B, h]
          step:
        """) + "\n".join(lines) + "\noutputs:\n  y: h\n"
    with pytest.raises(SpecError) as info:
        seqdsl.loads(spec, file="x.yaml")
    err = info.value
    first = bare.index(True)
    line_no = spec.splitlines().index(lines[first]) + 1
    col = re.search(r"U_\w @ h(?!\[)", lines[first]).end()  # 1-based column of that bare `h`
    assert (err.code, err.loc.line, err.loc.col) == ("E0402", line_no, col), err.format(spec)
    assert "write `h[t-1]`" in (err.hint or "")
    assert err.message.startswith("cycle that does not pass through a delay: h ->")
    caret = err.format(spec).splitlines()[2]
    assert caret.index("^") - caret.index("|") - 2 == col - 1


# -- did you mean: a transposition is one edit


def _known_key_sets() -> dict[str, list[str]]:
    sets = {"": _allowed_keys(())}
    for section in _SECTION_MODELS:
        sets[section] = sorted(_SECTION_MODELS[section].model_fields)
    return sets


def _transpositions(key: str) -> list[str]:
    return [key[:i] + key[i + 1] + key[i] + key[i + 2:] for i in range(len(key) - 1) if key[i] != key[i + 1]]


def test_every_adjacent_transposition_of_every_known_key_suggests_that_key():
    checked = 0
    for section, keys in _known_key_sets().items():
        for key in keys:
            for typo in _transpositions(key):
                if typo in keys:
                    continue
                assert did_you_mean(typo, keys) == f"did you mean `{key}`?", (section, typo)
                checked += 1
    dotted = {k.split(".")[-1] for k in KEYS}  # `seqdsl explain` suggests among these
    for key in dotted:
        for typo in _transpositions(key):
            if typo not in dotted:
                assert closest(typo, dotted) == key, typo
                checked += 1
    assert checked > 200


def test_stpe_is_step():
    assert did_you_mean("stpe", _allowed_keys(("recurrent",))) == "did you mean `step`?"


SPEC = """\
name: m
sizes: {{d: 2, h: 3}}
inputs:
  x: {{shape: [B, T, d]{inputs}}}
params:
  W: {{shape: [h, d]{params}}}
recurrent:
  state:
    h: {{shape: [B, h]{state}}}
  step:
    h: tanh(W @ x){recurrent}{stop}
outputs:
  y: h
train: {{loss: mse{train}}}
{top}"""
SECTIONS = {"inputs": "inputs", "params": "params", "recurrent.state": "state", "recurrent.stop": "stop",
            "recurrent": "recurrent", "train": "train", "": "top"}


def test_the_spec_the_typos_go_into_loads():
    assert seqdsl.loads(SPEC.format(**{v: "" for v in SECTIONS.values()}), file="x.yaml").warnings == []


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_transposed_key_in_a_spec_gets_the_key_as_its_hint(data):
    section = data.draw(st.sampled_from(sorted(SECTIONS)))
    keys = _known_key_sets()[section]
    key = data.draw(st.sampled_from([k for k in keys if [t for t in _transpositions(k) if t not in keys]]))
    typo = data.draw(st.sampled_from([t for t in _transpositions(key) if t not in keys]))
    slots = {v: "" for v in SECTIONS.values()}
    slot = SECTIONS[section]
    slots[slot] = {"top": f"{typo}: 1", "recurrent": f"\n  {typo}: 1",
                   "stop": f"\n  stop: {{when: h, equals: 0, {typo}: 1}}"}.get(slot, f", {typo}: 1")
    with pytest.raises((SpecError, SpecErrors)) as info:
        seqdsl.loads(SPEC.format(**slots), file="x.yaml")
    errors = info.value.errors if isinstance(info.value, SpecErrors) else [info.value]
    assert any(e.code == "E0201" and e.hint == f"did you mean `{key}`?" for e in errors), [e.format() for e in errors]


@given(st.text(max_size=8), st.text(max_size=8))
def test_the_distance_is_a_metric_with_transpositions_one(a, b):
    assert edit_distance(a, b) == edit_distance(b, a) and (edit_distance(a, b) == 0) == (a == b)
    assert edit_distance(a, b) <= max(len(a), len(b))
    if len(a) >= 2 and a[0] != a[1]:
        assert edit_distance(a, a[1] + a[0] + a[2:]) == 1



# -- the bounded search gives the answer of the plain one (seqdsl.suggest's bounds change nothing for short names)

def _plain_osa(a: str, b: str) -> int:
    """The textbook optimal string alignment table, every cell filled: the reference for the bounded one."""
    d = [[i + j if i == 0 or j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def _plain_closest(name: str, candidates: list[str]) -> str | None:
    """The rule of `closest` (nearest within one edit per three characters, ties by swap, length, common start,
    name), with every candidate compared in full."""
    import os

    limit = max(1, len(name) // 3)
    ranked = [((d, sorted(name) != sorted(c), abs(len(c) - len(name)), -len(os.path.commonprefix([name, c])), c))
              for c in set(candidates) for d in [_plain_osa(name, c)] if d <= limit and d < max(len(name), len(c))]
    return min(ranked)[-1] if ranked else None


_short = st.text("abcxy_", max_size=20)


@settings(max_examples=300, deadline=None)
@given(_short, _short, st.integers(0, 8))
def test_the_bounded_distance_is_the_plain_one_up_to_its_limit(a, b, limit):
    plain = _plain_osa(a, b)
    assert edit_distance(a, b) == plain
    assert edit_distance(a, b, limit) == min(plain, limit + 1)


@settings(max_examples=300, deadline=None)
@given(_short, st.lists(_short, max_size=30), st.data())
def test_suggestions_for_short_names_are_those_of_the_plain_search(name, candidates, data):
    # near misses of the name among the candidates, so that many draws have a suggestion
    edits = data.draw(st.lists(st.tuples(st.integers(0, 20), st.sampled_from("abxy")), max_size=3))
    near = name
    for at, letter in edits:
        near = near[:at] + letter + near[at + 1:]
    candidates = candidates + [near]
    assert closest(name, candidates) == _plain_closest(name, candidates)


def test_names_longer_than_the_bound_get_no_suggestion():
    from seqdsl.suggest import MAX_LENGTH

    long = "w" * (MAX_LENGTH + 1)
    assert closest(long[:-1] + "x", [long]) is None and closest("w" * 6, ["w" * 5]) == "w" * 5
