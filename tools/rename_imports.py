"""Rewrite the repository's imports of ``compilers`` and ``cli`` to their installed names, ``seqdsl.compilers`` and
``seqdsl.cli`` (issue 16: no generic top-level names in site-packages). Idempotent: a second run changes nothing.

    python tools/rename_imports.py            # rewrite in place, list the files changed
    python tools/rename_imports.py --check    # change nothing; exit 1 if a file would change

What it rewrites, in every tracked-looking ``*.py`` (not under .git, build, venvs) and in the Markdown files:

- import statements, found with `ast` (so a string or comment that looks like one is not an import):
  ``from compilers.x import y`` -> ``from seqdsl.compilers.x import y``, ``from cli import app`` ->
  ``from seqdsl.cli import app``, ``import cli [as c]`` -> ``from seqdsl import cli [as c]``,
  ``import compilers.x as m`` -> ``import seqdsl.compilers.x as m``, and ``import compilers.x`` ->
  ``import seqdsl.compilers.x`` with the file's uses of the name ``compilers`` (`ast.Name`) made
  ``seqdsl.compilers``;
- module paths in strings and comments (tokens found with `tokenize`): ``"compilers.build"`` (importlib,
  monkeypatch, ``python -c`` code, ``-m compilers.x``), ``f"compilers.generated.{name}"``, ``from compilers import``
  and ``from cli import`` in code held in a string, ``-m cli`` -> ``-m seqdsl``. Folder paths (``compilers/``) and
  the file name ``cli.py`` are left alone;
- the same module paths in Markdown (README, docs, BENCHMARKS.md, ...), in code blocks and inline code alike.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", "build", "dist", ".venv", "venv", "__pycache__", ".hypothesis", ".pytest_cache", "out"}
# this script and its tests, and the test that reads imports under both names, mention the old names on purpose
SKIP_FILES = {"tools/rename_imports.py", "tests/test_layering.py", "tests/test_packaging.py"}

_TEXT_RULES = [
    (re.compile(r"(?<![\w./\\-])compilers\.(?=[A-Za-z_{])"), "seqdsl.compilers."),
    (re.compile(r"(?<![\w.])(from\s+)compilers(?=\s+import\b)"), r"\1seqdsl.compilers"),
    (re.compile(r"(?<![\w.])(from\s+)cli(?=\s+import\b)"), r"\1seqdsl.cli"),
    (re.compile(r"(?<![\w./\\-])cli\.(?!py\b)(?=[A-Za-z_])"), "seqdsl.cli."),
    (re.compile(r"(-m\s+)cli\b(?![.\w])"), r"\1seqdsl"),
]


def rewrite_text(text: str) -> str:
    """Module paths in prose, comments, strings and Markdown."""
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def _offsets(source: str) -> list[int]:
    starts, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


def _span(starts: list[int], node: ast.AST) -> tuple[int, int]:
    # ast columns are UTF-8 byte offsets; the files are ASCII where imports are, but be exact anyway
    def at(line: int, col: int) -> int:
        text = _lines[line - 1]
        return starts[line - 1] + len(text.encode("utf-8")[:col].decode("utf-8", errors="ignore"))

    return at(node.lineno, node.col_offset), at(node.end_lineno, node.end_col_offset)  # type: ignore[arg-type]


_lines: list[str] = []


def _is_old(name: str | None) -> bool:
    return name is not None and (name in ("compilers", "cli") or name.startswith("compilers."))


def rewrite_python(source: str) -> str:
    global _lines
    tree = ast.parse(source)
    _lines = source.splitlines(keepends=True)
    starts = _offsets(source)
    edits: list[tuple[int, int, str]] = []
    bare_compilers = False  # `import compilers[.x]` without `as`: the file uses the name `compilers`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and _is_old(node.module):
            start, end = _span(starts, node)
            text = source[start:end]
            new = re.sub(r"^from\s+" + re.escape(node.module), "from seqdsl." + node.module, text)  # type: ignore
            edits.append((start, end, new))
        elif isinstance(node, ast.Import) and any(_is_old(a.name) for a in node.names):
            start, end = _span(starts, node)
            if len(node.names) == 1 and node.names[0].name == "cli":
                alias = node.names[0]
                edits.append((start, end, "from seqdsl import cli" + (f" as {alias.asname}" if alias.asname else "")))
                continue
            parts = []
            for alias in node.names:
                if alias.name == "cli":
                    raise SystemExit(f"line {node.lineno}: `import cli` together with other modules: split it first")
                if _is_old(alias.name):
                    bare_compilers |= alias.asname is None
                    parts.append("seqdsl." + alias.name + (f" as {alias.asname}" if alias.asname else ""))
                else:
                    parts.append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
            edits.append((start, end, "import " + ", ".join(parts)))
    if bare_compilers:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "compilers":
                start, end = _span(starts, node)
                edits.append((start, end, "seqdsl.compilers"))
    covered = [(s, e) for s, e, _ in edits]
    # strings and comments outside the import statements rewritten above
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for tok in tokens:
        if tok.type not in (tokenize.STRING, tokenize.COMMENT) and getattr(tokenize, "FSTRING_MIDDLE", -1) != tok.type:
            continue
        start = starts[tok.start[0] - 1] + tok.start[1]
        end = starts[tok.end[0] - 1] + tok.end[1]
        if any(s <= start < e for s, e in covered):
            continue
        new = rewrite_text(tok.string)
        if new != tok.string:
            edits.append((start, end, new))
    edits.sort(key=lambda edit: edit[0])
    for (_, end, _), (start, _, _) in zip(edits, edits[1:]):
        if start < end:
            raise SystemExit(f"overlapping rewrites at offset {start}: rewrite this file by hand")
    for start, end, new in reversed(edits):
        source = source[:start] + new + source[end:]
    return source


def files(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".venv") for part in rel.parts[:-1]) or str(rel) in SKIP_FILES:
            continue
        if path.is_file() and path.suffix in (".py", ".md"):
            found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this script's)")
    args = parser.parse_args(argv)
    changed = []
    for path in files(args.root):
        text = path.read_text(encoding="utf-8")
        new = rewrite_python(text) if path.suffix == ".py" else rewrite_text(text)
        if new != text:
            changed.append(path.relative_to(args.root))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for rel in changed:
        print(("would change " if args.check else "changed ") + str(rel))
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
