"""Error codes: every code the compiler can raise is documented, and every documented code is raised."""

from __future__ import annotations

import re

from conftest import ROOT

from seqdsl.codes import CODES, explain


def _codes_in_source() -> set[str]:
    found: set[str] = set()
    for path in [*ROOT.glob("seqdsl/**/*.py"), *ROOT.glob("compilers/**/*.py"), ROOT / "cli.py"]:
        if path.name == "codes.py":
            continue
        found |= set(re.findall(r'"([EW]0\d{3})"', path.read_text()))
    return found


def test_every_raised_code_is_documented_and_every_documented_code_is_raised():
    used = _codes_in_source()
    assert used - set(CODES) == set(), "codes raised but not documented in seqdsl/codes.py"
    assert set(CODES) - used == set(), "codes documented but never raised"


def test_explain():
    text = explain("e0402")
    assert text is not None and text.startswith("E0402: cycle without a delay")
    assert explain("E9999") is None
