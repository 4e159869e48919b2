"""The `seqdsl` command: a thin typer layer over `seqdsl` (the language) and `compilers` (the backends).

Exit status: 0 success, 2 a mistake in the spec or the command line (printed as file:line:col with a hint),
1 an internal failure (a seqdsl bug; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Describe sequence networks as YAML equations; compile them to PyTorch and ONNX.")
out = Console(highlight=False)

SETS = typer.Option(None, "--set", help="Override a size: --set h=128 (repeatable).")
DEBUG = typer.Option(False, "--debug", help="Show the Python traceback of an internal failure.")


def _fail(message: str, code: int) -> NoReturn:
    print(message, file=sys.stderr)  # plain: error blocks must not be re-wrapped or styled
    raise typer.Exit(code)


def _guard(debug: bool, action: Callable[[], Any]) -> Any:
    """Run ``action``; spec mistakes exit 2 with their message, anything unexpected exits 1."""
    from seqdsl.errors import SpecError, SpecErrors

    try:
        return action()
    except (SpecError, SpecErrors) as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        _fail("interrupted: nothing was published", 130)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug report, not a traceback
        if debug:
            raise
        from compilers.build import ParityError

        kind = "check failed" if isinstance(exc, ParityError) else "internal error"
        _fail(f"error: {kind}: {type(exc).__name__}: {exc}\n"
              "   = this is a bug in seqdsl, not in your spec; rerun with --debug for the traceback", 1)


def _parse_sets(sets: Optional[list[str]]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in sets or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier() or not value.strip().lstrip("-").isdigit():
            _fail(f"error[E0309]: --set expects NAME=INTEGER, got {item!r}\n   = help: for example --set h=128", 2)
        sizes[name.strip()] = int(value)
        if sizes[name.strip()] <= 0:
            _fail(f"error[E0306]: size `{name.strip()}` must be a positive integer, got {value}", 2)
    return sizes


def _warn(warnings: list[str]) -> None:
    for text in warnings:
        print(text, file=sys.stderr)


def _shape(dims: list[Any]) -> str:
    *shape, dtype = dims
    return f"[{', '.join(map(str, shape))}] {dtype}"


@app.command()
def validate(spec: Path = typer.Argument(..., help="The spec file."), sets: Optional[list[str]] = SETS,
             debug: bool = DEBUG) -> None:
    """Check a spec: YAML, schema, names, cycles and shapes. Prints nothing but a summary line when it is fine."""
    import seqdsl

    sizes = _parse_sets(sets)
    model = _guard(debug, lambda: seqdsl.load(spec, sizes))
    _warn([w.format() for w in model.warnings])
    out.print(f"{spec}: ok — {model.name}, {model.param_count:,} parameters, "
              f"{model.graph.count()} IR nodes")


@app.command()
def build(spec: Path = typer.Argument(..., help="The spec file."),
          output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output directory [build/<name>]."),
          sets: Optional[list[str]] = SETS,
          seq_len: int = typer.Option(7, "--seq-len", min=1, help="T used to check ONNX against PyTorch."),
          batch: int = typer.Option(3, "--batch", min=1, help="B used to check ONNX against PyTorch."),
          provider: str = typer.Option("auto", "--provider", help="onnxruntime provider: auto, cpu, cuda, tensorrt."),
          as_json: bool = typer.Option(False, "--json", help="Print the build summary as JSON."),
          max_params: int = typer.Option(100_000_000, "--max-params", min=1,
                                         help="Refuse models with more parameters (checked before allocating)."),
          debug: bool = DEBUG) -> None:
    """Compile a spec: model.py, weights.safetensors and model.onnx, checked in onnxruntime against PyTorch."""
    from compilers.build import build as run_build

    sizes = _parse_sets(sets)
    result = _guard(debug, lambda: run_build(spec, output, sizes, steps=seq_len, batch=batch, provider=provider,
                                             max_params=max_params))
    _warn(result.warnings)
    if as_json:
        from dataclasses import asdict

        print(json.dumps(asdict(result), indent=2))
        return
    table = Table(title=f"{result.name} → {result.out_dir}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("parameters", f"{result.param_count:,}")
    table.add_row("sizes", ", ".join(f"{k}={v}" for k, v in result.sizes.items()))
    for name, dims in result.inputs.items():
        table.add_row(f"input {name}", _shape(dims))
    for name, dims in result.outputs.items():
        table.add_row(f"output {name}", _shape(dims))
    table.add_row("files", ", ".join(result.files))
    table.add_row("onnxruntime", f"{result.provider} (ONNX Scan graph, {result.onnx_nodes} nodes)")
    worst = max(result.max_abs_diff.values(), default=0.0)
    table.add_row("max abs diff", f"{worst:.2e} vs PyTorch at B={batch}, T={seq_len} (limit 1e-4)")
    out.print(table)


@app.command()
def inspect(spec: Path = typer.Argument(..., help="The spec file."), sets: Optional[list[str]] = SETS,
            debug: bool = DEBUG) -> None:
    """Show a spec's inputs, outputs and parameters per module, without building anything."""
    import seqdsl
    from seqdsl.summary import params_by_module

    sizes = _parse_sets(sets)
    model = _guard(debug, lambda: seqdsl.load(spec, sizes))
    g = model.graph
    out.print(f"[bold]{model.name}[/bold]  sizes: " + ", ".join(f"{k}={v}" for k, v in model.sizes.items()))
    for n in model.input_nodes():
        out.print(f"  input  {n.name}: {_shape([*n.shape, n.dtype])}")
    for name, ref in g.outputs.items():
        out.print(f"  output {name}: {_shape([*g[ref].shape, g[ref].dtype])}")
    table = Table("module", "parameters", "count", title_justify="left")
    for group in params_by_module(model):
        shapes = ", ".join(f"{n} {list(s)}" for n, s in group.params)
        table.add_row(group.module or "(top)", shapes, f"{group.count:,}")
    table.add_row("[bold]total[/bold]", "", f"[bold]{model.param_count:,}[/bold]")
    out.print(table)


@app.command()
def explain(code: str = typer.Argument(..., help="An error code such as E0402.")) -> None:
    """Print the longer story behind an error code."""
    from seqdsl.codes import CODES
    from seqdsl.codes import explain as story

    text = story(code)
    if text is None:
        _fail(f"error: no such code {code!r}; codes run from {min(CODES)} to {max(CODES)}", 2)
    print(text)


@app.command()
def schema() -> None:
    """Print the JSON Schema of spec files (for editors: `# yaml-language-server: $schema=...`)."""
    from seqdsl.schema import json_schema

    print(json.dumps(json_schema(), indent=2))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
