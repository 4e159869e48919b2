"""``python -m seqdsl ...`` is the `seqdsl` command (so that ``torchrun -m seqdsl train ...`` works).

The command line is `seqdsl.cli` (the repository's cli.py); it is imported only here, when run as a program, so
that importing the language (``import seqdsl``) never imports typer, torch or any backend.
"""

from __future__ import annotations


def main() -> None:
    from seqdsl.cli import app

    app(prog_name="seqdsl")


if __name__ == "__main__":
    main()
