"""The version of seqdsl, written in one place: ``pyproject.toml`` (``[project] version``).

From a source checkout the version is read from the ``pyproject.toml`` beside the package (so a checkout never
reports the version of another installed copy); from an installed wheel, from the package metadata that
``pip`` wrote from that same file.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: no TOML reader in the standard library; the metadata still has the version
    tomllib = None  # type: ignore[assignment]

DISTRIBUTION = "seqdsl"


def _from_checkout() -> str | None:
    if tomllib is None:
        return None
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    if project.get("name") != DISTRIBUTION or not isinstance(project.get("version"), str):
        return None
    return project["version"]


def _version() -> str:
    found = _from_checkout()
    if found is not None:
        return found
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # neither a checkout nor installed: a copied folder
        return "0+unknown"


__version__ = _version()
