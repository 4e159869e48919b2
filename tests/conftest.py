from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

import seqdsl
from seqdsl.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def spec_error(text: str, sizes: dict[str, int] | None = None) -> SpecError:
    """The SpecError that the spec ``text`` (dedented) raises; fails the test if it loads."""
    with pytest.raises(SpecError) as info:
        seqdsl.loads(textwrap.dedent(text), sizes, file="x.yaml")
    return info.value


def load_text(text: str, sizes: dict[str, int] | None = None) -> seqdsl.Model:
    return seqdsl.loads(textwrap.dedent(text), sizes, file="x.yaml")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="run the property tests with many more examples (minutes)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--long"):
        os.environ["SEQDSL_LONG_TESTS"] = "1"  # read by the property tests when they are imported
