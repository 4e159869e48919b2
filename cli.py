"""The `seqdsl` command: a thin typer layer over `seqdsl` (the language) and `compilers` (the backends).

Exit status: 0 success, 2 a mistake in the spec or the command line (printed as file:line:col with a hint),
1 an internal failure (a seqdsl bug; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Describe sequence networks as YAML equations; compile them to PyTorch and ONNX.")
out = Console(highlight=False, soft_wrap=True)  # soft wrap: a long line stays one line when piped


def _print_version(value: bool) -> None:
    if value:
        from seqdsl.version import __version__

        print(f"seqdsl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print seqdsl's version and exit.")) -> None:
    """Describe sequence networks as YAML equations; compile them to PyTorch and ONNX."""

SETS = typer.Option(None, "--set", help="Override a size: --set h=128 (repeatable).")
ROOT = typer.Option(None, "--root", metavar="DIR",
                    help="The folder imports may read from; it must hold the spec [the spec's folder].")
DEBUG = typer.Option(False, "--debug", help="Show the Python traceback of an internal failure.")
THREADS = typer.Option(None, "--threads", min=1, max=1024,  # seqdsl.compilers.threads.MAX_THREADS
                       help="CPU threads per process (torch and onnxruntime); default: 1 for a small model or on a "
                            "busy machine, else one per core (README, Threads).")
# how far a spec may expand while it is lowered (seqdsl.budget): every spec is decided quickly unless raised
MAX_NODES = typer.Option(30_000, "--max-nodes", min=1, help="Refuse a spec that lowers to more IR nodes.")
MAX_DEPTH = typer.Option(32, "--max-depth", min=1, help="Refuse module calls nested deeper.")
MAX_REPEAT = typer.Option(1_000, "--max-repeat", min=1, help="Refuse a larger `repeat=N`.")


def _limits(nodes: int, depth: int, repeat: int) -> Any:
    import seqdsl

    return seqdsl.Limits(nodes=nodes, depth=depth, repeat=repeat)


def _terminal(message: str) -> str:
    from seqdsl.text import terminal_text  # here, not at the top: `seqdsl run` loads the language only to fail

    return terminal_text(message)


def _fail(message: str | list[str], code: int) -> NoReturn:
    """Print a message (or several blocks, a blank line apart) and exit. Every control character is escaped
    (`seqdsl.text.terminal_text`), and a newline only begins one of the message's own indented lines."""
    blocks = [message] if isinstance(message, str) else message
    print("\n\n".join(_terminal(b) for b in blocks), file=sys.stderr)  # plain: not re-wrapped or styled
    raise typer.Exit(code)


def _loaded(module: str, *names: str) -> tuple[type, ...]:
    """Exception classes of ``module`` if it is imported already (if not, nothing can have raised them): so that
    `seqdsl run` does not import the language and its compilers just to catch their errors."""
    mod = sys.modules.get(module)
    return tuple(getattr(mod, n) for n in names) if mod is not None else ()


def _guard(debug: bool, action: Callable[[], Any]) -> Any:
    """Run ``action``; spec and usage mistakes exit 2 with their message, anything unexpected exits 1."""
    try:
        return action()
    except KeyboardInterrupt:
        _fail("interrupted: nothing was published", 130)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug report, not a traceback
        if isinstance(exc, _loaded("seqdsl.compilers.training.run", "Interrupted")):
            _fail(f"{exc}", 130)
        if isinstance(exc, _loaded("seqdsl.errors", "SpecErrors")):
            _fail([e.format() for e in exc.errors], 2)  # type: ignore[attr-defined]
        if isinstance(exc, _loaded("seqdsl.errors", "SpecError")):
            _fail(str(exc), 2)
        if isinstance(exc, _loaded("seqdsl.compilers.build", "UsageError") + _loaded("seqdsl.compilers.publish", "OutputError")
                      + _loaded("seqdsl.compilers.onnx_runtime", "RuntimeUnavailable")):
            _fail(f"error: {_oneline(exc)}", 2)
        if debug:
            raise
        kind = "check failed" if isinstance(exc, _loaded("seqdsl.compilers.build", "ParityError")) else "internal error"
        _fail(f"error: {kind}: {type(exc).__name__}: {_oneline(exc)}\n"
              "   = this is a bug in seqdsl, not in your spec; rerun with --debug for the traceback", 1)


#: The one form of an integer on the command line: ASCII digits, optionally signed (`int()` alone would also take
#: `²`-like digits from other scripts, `1_000` and spaces).
_INTEGER = re.compile(r"[+-]?[0-9]{1,100}", re.ASCII)
#: A size in bytes: an integer, optionally with a binary unit (`8G`, `8GiB`, `512M`).
_BYTES = re.compile(r"(?P<n>[0-9]{1,100})\s*(?P<unit>[KMGT]i?B?|B)?", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _integer(option: str, text: str, minimum: int = 1, example: str = "") -> int:
    """``text`` as an integer of at least ``minimum``, or a one-line error (exit 2) naming ``option``."""
    if not _INTEGER.fullmatch(text.strip()) or int(text) < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        _fail(f"error: {option} expects {what}, got {text!r}" + (f" (for example {example})" if example else ""), 2)
    return int(text)


def _byte_count(option: str, text: str) -> int:
    match = _BYTES.fullmatch(text.strip())
    if not match or int(match["n"]) < 1:
        _fail(f"error: {option} expects a size in bytes such as 8G, 512M or 1000000, got {text!r}", 2)
    return int(match["n"]) * _UNITS[(match["unit"] or "")[:1].upper()]


def _parse_sets(sets: Optional[list[str]]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in sets or []:
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name.isidentifier() or not _INTEGER.fullmatch(value):
            _fail(f"error[E0309]: --set expects NAME=INTEGER, got {item!r}\n   = help: for example --set h=128", 2)
        sizes[name] = int(value)
        if sizes[name] <= 0:
            _fail(f"error[E0306]: size `{name}` must be a positive integer, got {value}", 2)
    return sizes


def _parse_axis_lengths(items: Optional[list[str]]) -> dict[str, int]:
    lengths: dict[str, int] = {}
    for item in items or []:
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name.isidentifier() or not _INTEGER.fullmatch(value) or int(value) < 1:
            _fail(f"error: --axis-len expects NAME=LENGTH with a positive length (for example --axis-len S=12), "
                  f"got {item!r}", 2)
        if name in lengths and lengths[name] != int(value):
            _fail(f"error: --axis-len {name} given twice ({lengths[name]} and {value})", 2)
        lengths[name] = int(value)
    return lengths


def _interactive() -> bool:
    """Whether a person watches: stderr is a terminal and no `CI` variable is set (CI services set it)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def _progress(what: str, stages: tuple[str, ...]) -> Iterator[Callable[[str], None]]:
    """A callback for the stages of a long task: a live line with a spinner, the stage and a bar on a terminal
    (stderr, so that stdout stays the result), gone when the task ends; nothing at all when piped or under CI."""
    if not _interactive():
        yield lambda _stage: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=len(stages))

        def update(stage: str) -> None:
            done = stages.index(stage) if stage in stages else 0
            bar.update(task, completed=done, description=f"{what}: {stage}")
            bar.refresh()

        yield update


def _oneline(exc: BaseException) -> str:
    """An exception's message, one line: what it quotes (a path, an ONNX name) cannot start a line of its own."""
    from seqdsl.text import printable

    return printable(str(exc))


def _shown(path: Path) -> str:
    """A file's name for a rich print: escaped for the terminal, and for rich's markup (`[` is no tag)."""
    from rich.markup import escape

    return escape(_terminal(str(path)))


def _warn(warnings: list[str]) -> None:
    for text in warnings:
        print(_terminal(text), file=sys.stderr)


def _shape(dims: list[Any]) -> str:
    *shape, dtype = dims
    return f"[{', '.join(map(str, shape))}] {dtype}"


def _spec_files(paths: list[Path]) -> list[Path]:
    """The spec files named by ``paths``: a file as given, a folder as every ``*.yaml``/``*.yml`` under it (sorted;
    hidden files and folders such as ``.git`` skipped).
    A path that does not exist is kept, so that it is reported like any other spec that fails to load."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                _fail(f"error: {path}: a folder with no .yaml spec files in it", 2)
            files += found
        else:
            files.append(path)
    return list(dict.fromkeys(files))


@app.command()
def validate(specs: list[Path] = typer.Argument(..., help="Spec files, or folders of them (every *.yaml inside)."),
             sets: Optional[list[str]] = SETS, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH,
             max_repeat: int = MAX_REPEAT, root: Optional[Path] = ROOT, debug: bool = DEBUG) -> None:
    """Check specs: YAML, schema, names, cycles and shapes. One line per spec that is fine, one error block per
    spec that is not; exit 2 if any failed."""
    import seqdsl

    sizes = _parse_sets(sets)
    limits = _limits(max_nodes, max_depth, max_repeat)
    files = _spec_files(specs)
    failed = 0
    for spec in files:
        try:
            model = _guard(debug, lambda: seqdsl.load(spec, sizes, limits, root=root))
        except typer.Exit as stop:
            if stop.exit_code != 2 or len(files) == 1:
                raise
            failed += 1
            continue
        _warn([w.format() for w in model.warnings])
        out.print(f"{_shown(spec)}: ok — {model.name}, {model.param_count:,} parameters, "
                  f"{model.graph.count()} IR nodes")
    if len(files) > 1:
        out.print(f"{len(files) - failed} of {len(files)} specs ok" + (f", {failed} failed" if failed else ""))
    if failed:
        raise typer.Exit(2)


@app.command()
def build(spec: Path = typer.Argument(..., help="The spec file."),
          output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output directory [build/<name>]."),
          sets: Optional[list[str]] = SETS,
          seq_len: str = typer.Option("7", "--seq-len", metavar="T", help="T used to check ONNX against PyTorch."),
          batch: str = typer.Option("3", "--batch", metavar="B", help="B used to check ONNX against PyTorch."),
          provider: str = typer.Option("auto", "--provider", help="onnxruntime provider: auto, cpu, cuda, tensorrt."),
          as_json: bool = typer.Option(False, "--json", help="Print the build summary as JSON."),
          max_params: str = typer.Option("100000000", "--max-params", metavar="N",
                                         help="Refuse models with more parameters (checked before allocating)."),
          max_memory: str = typer.Option("4G", "--max-memory", metavar="BYTES",
                                         help="Refuse a check run whose values (activations, inputs, outputs) "
                                              "would take more memory (computed before anything runs; 8G, 512M)."),
          max_steps: str = typer.Option("100000", "--max-steps", metavar="N",
                                        help="Refuse a check run of more loop steps in all (computed before "
                                             "anything runs)."),
          as_written: bool = typer.Option(False, "--as-written",
                                          help="Skip the optimisation passes: model.py computes the equations "
                                               "exactly as written, one line each (slower; for reading)."),
          unroll: bool = typer.Option(False, "--unroll",
                                      help="Write model.onnx as the explicit unrolled graph (no Scan; what CUDA "
                                           "graph capture needs) for T = --seq-len: it then runs at that length "
                                           "only, at any batch size. Weights stay one initializer each."),
          axis_lens: Optional[list[str]] = typer.Option(
              None, "--axis-len",
              help="Length of a time axis: --axis-len S=12 (repeatable). A model with several time axes "
                   "(seq2seq: S and T) unrolls each to its own length; every axis not given defaults to --seq-len "
                   "with --unroll. Also the length used for the check against PyTorch."),
          weights: Optional[Path] = typer.Option(
              None, "--weights",
              help="Trained weights: a .safetensors file keyed by the spec's parameter names (what "
                   "state_dict() gives), or a Lightning .ckpt such as seqdsl train's best.ckpt (read without "
                   "unpickling objects): model.py's weights, model.onnx and the check use them."),
          triton: Optional[Path] = typer.Option(
              None, "--triton",
              help="Also write a Triton Inference Server model repository: REPO/<name>/1/model.onnx and "
                   "REPO/<name>/config.pbtxt (onnxruntime backend, dynamic batching)."),
          onnx_forms: Optional[list[str]] = typer.Option(
              None, "--onnx-form", metavar="FORM",
              help="ONNX form of the recurrent blocks: auto (default: the faster in this onnxruntime, from a "
                   "shipped table or a short probe), native (ONNX's LSTM/GRU/RNN op) or scan; BLOCK=FORM for "
                   "one block (--onnx-form enc=scan). build.json's onnx_choice says what was chosen and why."),
          stats: Optional[Path] = typer.Option(
              None, "--stats", metavar="DATA.npz",
              help="The training data's normalisation statistics (x_mean, x_std, target_mean, target_std, what "
                   "`seqdsl data csv` writes), recorded in build.json."),
          raw_io: bool = typer.Option(False, "--raw-io",
                                      help="Fold the --stats into model.onnx: it takes and returns raw values."),
          max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH, max_repeat: int = MAX_REPEAT,
          threads: Optional[int] = THREADS, root: Optional[Path] = ROOT, debug: bool = DEBUG) -> None:
    """Compile a spec: model.py, weights.safetensors and model.onnx, checked in onnxruntime against PyTorch."""
    from seqdsl.compilers.build import STAGES
    from seqdsl.compilers.build import build as run_build
    from seqdsl.compilers.parity import check_line

    sizes = _parse_sets(sets)
    lengths = _parse_axis_lengths(axis_lens)
    _check_provider(provider)
    limits = {"steps": _integer("--seq-len", seq_len, example="--seq-len 16"),
              "batch": _integer("--batch", batch, example="--batch 4"),
              "max_params": _integer("--max-params", max_params, example="--max-params 500000000"),
              "max_memory": _byte_count("--max-memory", max_memory),
              "max_steps": _integer("--max-steps", max_steps, example="--max-steps 1000000")}
    with _progress("building", STAGES) as stage:
        result = _guard(debug, lambda: run_build(spec, output, sizes, provider=provider, unroll=unroll,
                                                 axis_lengths=lengths, optimize_passes=not as_written,
                                                 progress=stage, weights=weights, triton=triton,
                                                 onnx_form=onnx_forms, limits=_limits(max_nodes, max_depth, max_repeat),
                                                 normalisation=stats, raw_io=raw_io, threads=threads, root=root,
                                                 **limits))
    _warn(result.warnings)
    if as_json:
        from dataclasses import asdict

        print(json.dumps(asdict(result), indent=2))
        return
    rows = [("parameters", f"{result.param_count:,}"),
            ("sizes", ", ".join(f"{k}={v}" for k, v in result.sizes.items()))]
    rows += [(f"input {name}", _shape(dims)) for name, dims in result.inputs.items()]
    rows += [(f"output {name}", _shape(dims)) for name, dims in result.outputs.items()]
    rows.append(("files", ", ".join(result.files)))
    if result.triton:
        rows.append(("triton", f"{result.triton}/config.pbtxt, {result.triton}/1/model.onnx"))
    data = "; weights in model.onnx.data" if result.onnx_external_data else ""
    if result.onnx_form == "unrolled":
        at = ", ".join(f"{k}={v}" for k, v in (result.unrolled_lengths or {}).items())
        form = f"unrolled for {at}, runs at that length only" if at else "unrolled (fixed step counts), any length"
    elif result.onnx_form == "none":
        form = "no recurrence, runs at any length"
    else:
        blocks = ", ".join(f"{block} {kind}" for block, kind in result.onnx_blocks.items())
        form = f"{blocks}; runs at any length"
    rows.append(("onnx", f"{form} ({result.onnx_nodes} nodes{data})"))
    if any(c["reason"] != "only form" for c in result.onnx_choice.values()):
        why = "; ".join(f"{block} {c['form']}: {c['reason']}" for block, c in result.onnx_choice.items())
        version = next(iter(result.onnx_choice.values()))["onnxruntime"]
        rows.append(("onnx form", f"{why} (onnxruntime {version})"))
    if result.normalisation is not None:
        stats_of = ", ".join([*result.normalisation["inputs"], *result.normalisation["outputs"]])
        rows.append(("normalisation", f"{stats_of}: " + ("raw values in and out of model.onnx (the check runs "
                     "normalised)" if result.normalisation["raw_io"] else "recorded in build.json; model.onnx "
                     "takes normalised values")))
    rows.append(("onnxruntime", result.provider))
    shape = ", ".join(f"{k}={v}" for k, v in result.check_shape.items())
    rows.append(("check", f"vs PyTorch at {shape}: {check_line(result.check)}"))
    if result.threads:
        rows.append(tuple(result.threads.split(": ", 1)))  # type: ignore[arg-type]  # ("threads", "1 (why)")
    title = _terminal(f"{result.name} → {result.out_dir}")  # the folder's name may come from anywhere
    rows = [(key, _terminal(value)) for key, value in rows]
    if not _interactive():  # piped, or under CI: one `key: value` line each, for grep and logs
        print(title)
        for key, value in rows:
            print(f"  {key}: {value}")
        return
    from rich.markup import escape

    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(escape(key), escape(value))
    out.print(table)


def _load_npy(name: str, path: Path, max_bytes: int) -> Any:
    from seqdsl import datafiles

    try:
        return datafiles.read_npy(path, max_bytes)  # the header's size bounded before the array is loaded
    except datafiles.DataFileError as exc:
        _fail(f"error: --input {name}={datafiles.shown(path)}: {exc.line()}", 2)


def _parse_inputs(items: list[str], max_bytes: int) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for item in items:
        name, sep, file = item.partition("=")
        name = name.strip()
        if not sep or not name or not file:
            _fail(f"error: --input expects NAME=FILE.npy (for example --input x=x.npy), got {item!r}", 2)
        if name in inputs:
            _fail(f"error: --input {name} given twice", 2)
        inputs[name] = _load_npy(name, Path(file), max_bytes)
    return inputs


def _summary(value: Any) -> str:
    """Shape, dtype and a few numbers of one output."""
    import numpy as np

    head = f"shape {tuple(value.shape)} {value.dtype.name}"
    if value.size == 0:
        return f"{head}  (empty)"
    if value.dtype == np.bool_:
        return f"{head}  true {int(value.sum()):,} of {value.size:,}"
    if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
        return head
    values = value.astype(np.float64)
    finite = values[np.isfinite(values)]
    nonfinite = value.size - finite.size
    stats = (f"min {finite.min():.6g}  max {finite.max():.6g}  mean {finite.mean():.6g}"
             if finite.size else "no finite values")
    return f"{head}  {stats}" + (f"  non-finite {nonfinite:,}" if nonfinite else "")


#: What an output's file name keeps as it is; any other character, a leading dot, or a name above 100 characters
#: makes the file name the kept characters plus `~` and a digest of the whole name.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}", re.ASCII)


def _output_files(names: list[str]) -> dict[str, str]:
    """Output name -> its file name in --output-dir, one file per output (an injective mapping): a plain name as it
    is (``y`` -> ``y.npy``); any other as its plain characters, ``~`` and 16 hex digits of its SHA-256 (``yé`` ->
    ``y_~<digest>.npy``). No plain name holds ``~``, so the two kinds never meet, and two names that differ only in
    case (one file on macOS and Windows) both get the digest."""
    import hashlib

    def digested(name: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:100]
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{safe}~{digest}.npy"

    files = {n: f"{n}.npy" if _PLAIN_NAME.fullmatch(n) else digested(n) for n in names}
    folded: dict[str, list[str]] = {}
    for name, file in files.items():
        folded.setdefault(file.casefold(), []).append(name)
    for group in folded.values():
        if len(group) > 1:
            files.update({n: digested(n) for n in group})
    return files


#: The marker of a folder `run --output-dir` made: it lists the files runs wrote there (`seqdsl.compilers.publish`).
RUN_MARKER = "run.json"
_RUN_FILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}\.npy|[A-Za-z0-9_.-]{0,100}~[0-9a-f]{16}\.npy", re.ASCII)


def _run_owner() -> Any:
    from seqdsl.compilers.publish import Owner

    return Owner("--output-dir", RUN_MARKER, lambda n: n == RUN_MARKER or _RUN_FILE.fullmatch(n) is not None,
                 "run", "--output-dir preds")


def _run_output_dir(output_dir: Path) -> Path:
    """The real folder --output-dir names, under the rule of `seqdsl.compilers.publish` (new, empty, or one an
    earlier run made); a refusal is one line, exit 2. Writes nothing."""
    from seqdsl.compilers.publish import OutputError, output_dir as checked

    try:
        return checked(output_dir, None, _run_owner())
    except OutputError as exc:
        _fail(f"error: {exc}", 2)


def _claim_run_dir(real: Path, names: list[str]) -> None:
    """Make the folder and write its marker (the files this run writes, with those earlier runs wrote)."""
    from seqdsl import files
    from seqdsl.compilers.publish import SIGNATURE, built_files

    real.mkdir(parents=True, exist_ok=True)
    listed = sorted({RUN_MARKER, *names} | set(built_files(real, _run_owner()) or ()))
    marker = {"built_by": SIGNATURE, "made_by": "seqdsl run", "files": listed}
    files.write_text(real / RUN_MARKER, json.dumps(marker, indent=2) + "\n")


@app.command()
def run(model: Path = typer.Argument(..., help="The ONNX model (model.onnx of a build, or any .onnx file)."),
        inputs: list[str] = typer.Option(..., "--input", "-i",
                                         help="An input as NAME=FILE.npy (repeatable; one per model input)."),
        provider: str = typer.Option("auto", "--provider", help="onnxruntime provider: auto, cpu, cuda, tensorrt."),
        output_dir: Optional[Path] = typer.Option(None, "--output-dir",
                                                  help="Also write each output to DIR/<output>.npy."),
        cast: bool = typer.Option(False, "--cast",
                                  help="Convert an input of another dtype to the model's (float64 to float32, "
                                       "int32 to int64...), with a warning each; values that do not fit are "
                                       "refused."),
        max_data: str = typer.Option("4G", "--max-data", metavar="BYTES",
                                     help="Refuse an input file whose array declares more bytes (default 4G)."),
        threads: Optional[int] = THREADS, debug: bool = DEBUG) -> None:
    """Run an ONNX model in onnxruntime on .npy inputs: prints each output's shape, dtype and range."""
    import numpy as np
    import onnxruntime as ort

    from seqdsl.compilers import onnx_runtime as rt
    from seqdsl.compilers.threads import choose_threads, describe

    if model.suffix.lower() != ".onnx":
        _fail(f"error: {model}: not an .onnx file (give the model.onnx of a build)", 2)
    if not model.is_file():
        _fail(f"error: {model}: no such file" if not model.exists() else f"error: {model}: not a file", 2)
    out_real = _run_output_dir(output_dir) if output_dir is not None else None  # refused before the model runs
    arrays = _parse_inputs(inputs, _byte_count("--max-data", max_data))
    said: list[str] = []  # the threads the rule chose, said after the outputs

    def action() -> Any:
        try:
            rt.available_providers(provider)  # an unknown name is the user's: ValueError before the session
        except ValueError as exc:
            _fail(f"error: --provider: {exc}", 2)
        chosen, why = choose_threads(_onnx_step_work(model, arrays), threads)
        if threads is None:  # what the rule chose is said; a given --threads is not repeated
            said.append(describe(chosen, why))
        try:
            session, used = rt.make_session(model, provider, chosen)
            feed, casts = rt.prepare_inputs(session, arrays, cast=cast)
        except rt.ModelLoadError as exc:
            _fail(f"error: {exc}", 2)
        except rt.InputMismatch as exc:
            _fail(f"error: {model}: {exc}", 2)
        names = [o.name for o in session.get_outputs()]
        try:
            quiet = ort.RunOptions()
            quiet.log_severity_level = 4  # the error is reported once, below, not also in onnxruntime's log
            values = session.run(names, feed, quiet)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own classes; e.g. a token id beyond the vocabulary
            if type(exc).__module__.split(".")[0] != "onnxruntime":
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _fail(f"error: {model}: onnxruntime failed on these inputs: {reason}", 2)
        return rt.RunResult(dict(zip(names, map(np.asarray, values))), used, casts, rt.non_finite_inputs(feed))

    result = _guard(debug, action)
    _warn([f"warning: --cast: {line}" for line in result.casts] + [f"warning: {line}" for line in result.warnings])
    from seqdsl.text import printable

    shown = {name: printable(name) for name in result.outputs}  # names from an arbitrary .onnx: shown escaped
    width = max((len(n) for n in shown.values()), default=0)
    for name, value in result.outputs.items():
        print(f"{shown[name]:<{width}}  {_summary(value)}")
    print(*said, sep="\n")
    print(f"provider: {result.provider}")
    if output_dir is not None:
        from seqdsl import files

        written = []
        names = _output_files(list(result.outputs))
        try:
            _claim_run_dir(_run_output_dir(output_dir), list(names.values()))  # checked again: it may have changed
            for name, file in names.items():
                value = result.outputs[name]
                written.append(str(output_dir / file))
                files.write(out_real / file, lambda f, v=value: np.save(f, v, allow_pickle=False))
        except OSError as exc:
            _fail(f"error: --output-dir {output_dir}: {exc.strerror or exc}", 2)
        print(f"wrote {', '.join(map(printable, written))}")


def _onnx_step_work(model: Path, arrays: dict[str, Any]) -> float:
    """`seqdsl.compilers.threads.step_work` of an ONNX file: its initializers' elements, the inputs' first axis as B."""
    import math

    import onnx

    from seqdsl.compilers.threads import step_work

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - not a readable model: make_session says so, with its reason
        return 0.0
    params = sum(math.prod(t.dims) for t in graph.initializer)
    batch = next((a.shape[0] for a in arrays.values() if getattr(a, "ndim", 0) >= 1), 1)
    return step_work(params, batch)


def _si(n: int) -> str:
    """1234567 -> "1.23 M" (FLOPs and MACs read at a glance)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale * 1000 / 1024:  # 1,000 KiB reads as 0.977 MiB
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


@app.command()
def train(spec: Path = typer.Argument(..., help="The spec file."),
          data: Path = typer.Option(..., "--data", help="Training data: an .npz with one array per model input "
                                                          "(keyed by its name) and the targets."),
          val: Optional[Path] = typer.Option(None, "--val", help="Validation data, as --data."),
          output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                help="The build directory written at the end "
                                                     "(default: build/<name>)."),
          sets: Optional[list[str]] = SETS,
          loss: Optional[str] = typer.Option(None, "--loss", help="cross_entropy or mse (default: the spec's "
                                                                  "train.loss, else from the targets' dtype)."),
          target: Optional[str] = typer.Option(None, "--target",
                                               help="The targets' array in the data (default: target)."),
          output_name: Optional[str] = typer.Option(None, "--output-name",
                                                    help="The model output the loss reads (default: the first)."),
          optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam or sgd (default: adam)."),
          lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: 1e-3)."),
          momentum: float = typer.Option(0.0, "--momentum", help="SGD's momentum (default: 0)."),
          batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size (default: 32)."),
          steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (or --epochs)."),
          epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the data (default: 10)."),
          clip: Optional[float] = typer.Option(None, "--clip",
                                               help="Largest global gradient norm; 0: off (default: 1.0)."),
          seed: str = typer.Option("0", "--seed", help="Seed of the initial weights and the batch order "
                                                       "(0 to 4294967295)."),
          bucket: Optional[bool] = typer.Option(None, "--bucket/--no-bucket",
                                                help="Batch sequences of similar length together and cut each batch "
                                                     "to its longest (default: on when the model has `lengths:`)."),
          weight_decay: str = typer.Option("0", "--weight-decay", help="Weight decay: AdamW's decoupled one with "
                                                                      "adam, SGD's own with sgd (default: 0)."),
          schedule: str = typer.Option("none", "--schedule", help="Learning rate over the run: none, cosine, step "
                                                                  "(x0.1 at 1/2 and 3/4), plateau (x0.5 after 2 "
                                                                  "validations without a better loss)."),
          warmup: str = typer.Option("0", "--warmup", metavar="N", help="Steps of linear warm-up first."),
          accumulate: str = typer.Option("1", "--accumulate", metavar="N",
                                         help="Batches whose gradients make one optimiser step."),
          early_stop: Optional[str] = typer.Option(None, "--early-stop", metavar="PATIENCE",
                                                   help="Stop after PATIENCE validations without a better "
                                                        "validation loss (needs --val)."),
          use: Optional[str] = typer.Option(None, "--use", help="The weights the build takes: best (on the "
                                                                "validation loss; default with --val) or last."),
          logger: str = typer.Option("csv", "--logger", help="csv (metrics.csv alone) or tensorboard (also "
                                                             "TensorBoard event files in the work folder)."),
          metrics_format: str = typer.Option("csv", "--metrics-format", help="csv or jsonl."),
          log_every: Optional[int] = typer.Option(None, "--log-every", min=1, help="Steps per metrics row."),
          eval_every: Optional[int] = typer.Option(None, "--eval-every", min=1,
                                                   help="Steps between validations and checkpoints "
                                                        "(default: a tenth of the run)."),
          resume: bool = typer.Option(False, "--resume", help="Continue the work folder's run from last.ckpt."),
          fresh: bool = typer.Option(False, "--fresh", help="Replace the earlier run in the work folder (its "
                                                            "checkpoints and metrics)."),
          work_dir: Optional[Path] = typer.Option(None, "--work-dir",
                                                  help="Metrics, plot and checkpoints (default: <DIR>.train)."),
          device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
          progress: str = typer.Option("auto", "--progress", help="auto (a bar on a terminal), bar, lines, quiet."),
          threads: Optional[int] = THREADS,
          nproc: int = typer.Option(1, "--nproc", min=1,
                                    help="Train on N processes of this machine with DDP (Lightning starts them)."),
          provider: str = typer.Option("auto", "--provider", help="onnxruntime provider of the final check."),
          max_params: int = typer.Option(100_000_000, "--max-params", min=1, help="Refuse larger models."),
          max_data: str = typer.Option("4G", "--max-data", metavar="BYTES",
                                       help="Refuse a data file whose arrays declare more bytes (default 4G)."),
          no_build: bool = typer.Option(False, "--no-build",
                                        help="Skip the final build (the weights stay in the checkpoints)."),
          raw_io: bool = typer.Option(False, "--raw-io",
                                      help="Fold the data's normalisation statistics (seqdsl data csv) into "
                                           "model.onnx: it takes and returns raw values."),
          as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
          root: Optional[Path] = ROOT, debug: bool = DEBUG) -> None:
    """Train a spec on .npz data with Lightning (DDP with --nproc or torchrun), then build DIR with the best weights."""
    import os

    from seqdsl.compilers.training import TrainOptions

    sizes = _parse_sets(sets)
    options = TrainOptions(loss=loss, target=target, output=output_name, optimizer=optimizer, lr=lr,
                           batch_size=batch_size, steps=steps, epochs=epochs, clip=clip, momentum=momentum,
                           seed=_integer("--seed", seed, minimum=0, example="--seed 1"),
                           bucket=bucket, metrics_format=metrics_format, log_every=log_every, eval_every=eval_every,
                           resume=resume, work_dir=work_dir, device=device, progress=progress, threads=threads,
                           provider=provider, max_params=max_params, build=not no_build, raw_io=raw_io,
                           weight_decay=_number("--weight-decay", weight_decay), schedule=schedule,
                           warmup=_integer("--warmup", warmup, minimum=0, example="--warmup 100"),
                           accumulate=_integer("--accumulate", accumulate, example="--accumulate 4"),
                           early_stop=_integer("--early-stop", early_stop, example="--early-stop 5")
                           if early_stop is not None else None,
                           use=use or "best", use_given=use is not None, logger=logger, fresh=fresh, nproc=nproc,
                           max_data=_byte_count("--max-data", max_data), root=root)
    if nproc > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        _fail("error: --nproc under torchrun: give one or the other", 2)
    from seqdsl.compilers.training import train as run_train

    result = _guard(debug, lambda: run_train(spec, data, output, sizes, val, options))
    from seqdsl.compilers.training import summary_lines

    if result.rank != 0:  # rank 0 alone reports
        return
    if result.build is not None:
        _warn(result.build.warnings)
    if as_json:
        from dataclasses import asdict

        print(json.dumps(asdict(result), indent=2))
        return
    print("\n".join(summary_lines(result)))


def _check_provider(provider: str) -> None:
    """An unknown ``--provider`` is the user's mistake, said before any work (exit 2)."""
    from seqdsl.compilers.onnx_runtime import _normalize

    try:
        _normalize(provider)
    except ValueError as exc:
        _fail(f"error: --provider: {exc}", 2)


def _number(option: str, text: str) -> float:
    """``text`` as a finite number, zero or positive, or a one-line error (exit 2) naming ``option``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 <= value < math.inf):
        _fail(f"error: {option} expects a finite number, zero or positive, got {text!r}", 2)
    return value


#: `seqdsl data TASK`: the generated tasks (seqdsl.tasks) and the readers of a FILE, with the options each takes
#: beside the shared ones (-o, --force, --max-data). One check of names and values for them all, before any work.
_DATA_GENERATED = ("adding", "copy", "brackets")
_DATA_READERS = {"text": "a text file", "csv": "a table (.csv or .parquet)"}
_DATA_OPTIONS = {"generated": ("--length", "--examples", "--seed", "--min-length"),
                 "text": ("--level", "--window", "--stride", "--val-fraction", "--max-vocab"),
                 "csv": ("--columns", "--target", "--window", "--horizon", "--val", "--val-fraction")}
_LOUD_BYTES = 256 * 2**20  # `seqdsl data` says how much it makes from this size on
_FRACTION = re.compile(r"[0-9]{0,20}(\.[0-9]{0,20})?", re.ASCII)


def _fraction(option: str, text: str) -> float:
    """``text`` as a number in [0, 1), or a one-line error naming ``option``."""
    if not _FRACTION.fullmatch(text.strip()) or text.strip() in ("", ".") or float(text) >= 1:
        _fail(f"error: {option} expects a number in [0, 1) such as 0.1, got {text!r}", 2)
    return float(text)


def _data_outputs(output: Path, force: bool, companions: tuple[str, ...] = ()) -> list[Path]:
    """``-o FILE.npz`` and the files written beside it (``FILE`` + each suffix of ``companions``), each checked
    (seqdsl.datafiles.check_output): every one is new, or a file seqdsl wrote and --force replaces."""
    from seqdsl import datafiles

    if output.suffix != ".npz":
        _fail(f"error: -o {datafiles.shown(output)}: the file name ends in .npz", 2)
    paths = [output] + [output.with_name(output.stem + suffix) for suffix in companions]
    try:
        for path in paths:
            datafiles.check_output(path, force)
    except datafiles.DataFileError as exc:
        _fail(f"error: {exc.line()}", 2)
    return paths


def _data_write(files: dict[Path, Any]) -> None:
    """Write each ``.npz`` (a dict of arrays) or ``.json`` (a dict) of ``files``, each atomically and marked."""
    from seqdsl import datafiles

    try:
        for path, value in files.items():
            (datafiles.write_json if path.suffix == ".json" else datafiles.write_npz)(value, path)
    except datafiles.DataFileError as exc:
        _fail(f"error: {exc.line()}", 2)


def _arrays_line(path: Path, arrays: dict[str, Any]) -> str:
    from seqdsl.datafiles import shown

    return f"wrote {shown(path)}: " + ", ".join(f"{k} {tuple(v.shape)} {v.dtype.name}" for k, v in arrays.items())


@app.command()
def data(task: str = typer.Argument(..., help="adding, copy or brackets (generated); text or csv (read from "
                                                "FILE)."),
         source: Optional[Path] = typer.Argument(None, metavar="[FILE]",
                                                 help="text: the text file; csv: the table, a .csv or .parquet file."),
         output: Path = typer.Option(..., "-o", "--output",
                                     help="The .npz file to write (text: the training windows; the validation "
                                          "windows go to <name>.val.npz and the vocabulary to <name>.vocab.json "
                                          "beside it)."),
         length: Optional[str] = typer.Option(None, "--length", "-T", metavar="T",
                                              help="The sequence length (for copy: the delay)."),
         examples: Optional[str] = typer.Option(None, "--examples", "-n", metavar="N",
                                                help="How many sequences (default 10000)."),
         seed: Optional[str] = typer.Option(None, "--seed", metavar="S",
                                            help="The generator's seed, 0 to 2**64-1 (the same seed, the same "
                                                 "arrays; default 0)."),
         min_length: Optional[str] = typer.Option(None, "--min-length", metavar="M",
                                                  help="Vary the lengths from this to --length; writes `lengths`."),
         level: Optional[str] = typer.Option(None, "--level", help="text: char (UTF-8 characters; default) or "
                                                                   "byte."),
         window: Optional[str] = typer.Option(None, "--window", metavar="W",
                                              help="text: tokens per example (default 64); csv: input rows per "
                                                   "example."),
         stride: Optional[str] = typer.Option(None, "--stride", metavar="S",
                                              help="text: tokens from one window's start to the next "
                                                   "(default: --window)."),
         val_fraction: Optional[str] = typer.Option(None, "--val-fraction", metavar="F",
                                                    help="text: the file's tail kept for validation (default 0.1; "
                                                         "0: none); csv: the last fraction of the rows (0.2)."),
         max_vocab: Optional[str] = typer.Option(None, "--max-vocab", metavar="V",
                                                 help="text, char level: refuse more distinct characters "
                                                      "(default 1024)."),
         columns: Optional[str] = typer.Option(None, "--columns", help="csv: the input columns, NAME[,NAME...]."),
         target_column: Optional[str] = typer.Option(None, "--target", help="csv: the column to forecast."),
         horizon: Optional[str] = typer.Option(None, "--horizon", metavar="H",
                                               help="csv: target rows after each window (default 1)."),
         val_output: Optional[Path] = typer.Option(None, "--val", help="csv: the validation .npz to write."),
         max_data: str = typer.Option("4G", "--max-data", metavar="BYTES",
                                      help="Refuse to make more bytes of arrays (default 4G)."),
         force: bool = typer.Option(False, "--force", help="Replace files an earlier `seqdsl data` wrote."),
         debug: bool = DEBUG) -> None:
    """Write training data: a long-dependency task (the adding problem, copy memory, counting brackets) or the
    next-token windows of a text file."""
    from seqdsl.datafiles import shown

    kind = "generated" if task in _DATA_GENERATED else task
    if kind not in _DATA_OPTIONS:
        _fail(f"error: seqdsl data: unknown task {shown(task)!r}; one of "
              f"{', '.join(_DATA_GENERATED + tuple(_DATA_READERS))}", 2)
    given = {"--length": length, "--examples": examples, "--seed": seed, "--min-length": min_length,
             "--level": level, "--window": window, "--stride": stride, "--val-fraction": val_fraction,
             "--max-vocab": max_vocab, "--columns": columns, "--target": target_column, "--horizon": horizon,
             "--val": val_output}
    for option, value in given.items():
        if value is not None and option not in _DATA_OPTIONS[kind]:
            users = " and ".join(k if k != "generated" else "/".join(_DATA_GENERATED)
                                 for k, names in _DATA_OPTIONS.items() if option in names)
            _fail(f"error: {option} applies to seqdsl data {users}, not {task}", 2)
    if kind in _DATA_READERS and source is None:
        _fail(f"error: seqdsl data {task} FILE: give {_DATA_READERS[kind]} to read", 2)
    if kind == "generated" and source is not None:
        _fail(f"error: seqdsl data {task} makes its data; it reads no FILE (got {shown(source)!r})", 2)
    cap = _byte_count("--max-data", max_data)
    if kind == "text":
        assert source is not None
        _data_text(source, output, force, cap, level, window, stride, val_fraction, max_vocab, debug)
        return
    if kind == "csv":
        _data_csv(source, output, val_output, columns, target_column, window, horizon or "1",
                  _fraction("--val-fraction", val_fraction) if val_fraction is not None else 0.2, force, debug)
        return
    if length is None:
        _fail(f"error: seqdsl data {task}: --length is required (for example --length 50)", 2)
    _data_generated(task, output, force, cap, _integer("--length", length, example="--length 50"),
                    _integer("--examples", "10000" if examples is None else examples, example="-n 10000"),
                    _integer("--seed", "0" if seed is None else seed, minimum=0, example="--seed 1"),
                    None if min_length is None else _integer("--min-length", min_length, example="--min-length 10"),
                    debug)


def _data_generated(task: str, output: Path, force: bool, cap: int, length: int, n: int, seed: int,
                    min_length: Optional[int], debug: bool) -> None:
    from seqdsl import tasks
    from seqdsl.datafiles import size_text

    if seed > tasks.MAX_SEED:
        _fail(f"error: --seed expects an integer from 0 to 2**64 - 1, got {seed}", 2)
    paths = _data_outputs(output, force)
    size = tasks.output_bytes(task, n, length, min_length)
    if size > cap:
        _fail(f"error: seqdsl data {task}: -n {n} sequences of --length {length} make {size_text(size)} of "
              f"arrays, above --max-data {size_text(cap)} (fewer or shorter sequences, or raise --max-data)", 2)
    if size >= _LOUD_BYTES:  # not quietly: a person sees what is being allocated before it is
        print(f"making {size_text(size)} of arrays", file=sys.stderr)

    def make() -> Any:
        try:
            return tasks.generate(task, n, length, seed=seed, min_length=min_length)
        except tasks.TaskError as exc:
            _fail(f"error: seqdsl data {task}: {exc}", 2)
        except MemoryError:
            _fail(f"error: seqdsl data {task}: not enough memory for {size_text(size)} of arrays (lower -n, "
                  "--length or --max-data)", 2)

    arrays = _guard(debug, make)
    _data_write({paths[0]: arrays})
    print(_arrays_line(paths[0], arrays))
    print(f"trivial baseline: {tasks.TASKS[task].baseline}")


def _data_text(source: Path, output: Path, force: bool, cap: int, level: Optional[str], window: Optional[str],
               stride: Optional[str], val_fraction: Optional[str], max_vocab: Optional[str], debug: bool) -> None:
    from seqdsl import text_data
    from seqdsl.datafiles import shown

    level = "char" if level is None else level
    if level not in text_data.LEVELS:
        _fail(f"error: --level expects char or byte, got {level!r}", 2)
    width = _integer("--window", "64" if window is None else window, example="--window 64")
    step = _integer("--stride", stride, example="--stride 32") if stride is not None else width
    fraction = _fraction("--val-fraction", val_fraction) if val_fraction is not None else 0.1
    vocab_cap = (text_data.MAX_VOCAB if max_vocab is None
                 else _integer("--max-vocab", max_vocab, example="--max-vocab 4096"))
    if max_vocab is not None and level == "byte":
        _fail("error: --max-vocab applies to --level char (bytes always have 257 ids)", 2)
    paths = _data_outputs(output, force, (".vocab.json",) + ((".val.npz",) if fraction else ()))

    def make() -> Any:
        try:
            return text_data.make(source, level, width, step, fraction, vocab_cap, cap)
        except text_data.TextDataError as exc:
            _fail(f"error: seqdsl data text: {exc}", 2)
        except MemoryError:
            _fail("error: seqdsl data text: not enough memory for these windows (a larger --stride, a smaller "
                  "--window, or a lower --max-data)", 2)

    made = _guard(debug, make)
    vocabulary = {**made.vocabulary.to_json(), "source": source.name, "tokens_in_file": made.tokens,
                  "validation_fraction": fraction, "window": width, "stride": step}
    files: dict[Path, Any] = {paths[0]: made.train, paths[1]: vocabulary}
    if made.val is not None:
        files[paths[2]] = made.val
    _data_write(files)
    print(_arrays_line(paths[0], made.train))
    if made.val is not None:
        print(_arrays_line(paths[2], made.val) + (f" ({made.unknown:,} tokens unseen in training: id 0)"
                                                  if made.unknown else ""))
    size = made.vocabulary.size
    print(f"wrote {shown(paths[1])}: {size} token ids (0: padding/unknown); train with --set vocab={size}")


def _data_csv(table: Optional[Path], output: Path, val: Optional[Path], columns: Optional[str],
              target: Optional[str], window: Optional[str], horizon: str, val_fraction: float, force: bool,
              debug: bool) -> None:
    """`seqdsl data csv`: the two .npz files, each written whole and marked (`_data_write`)."""
    from seqdsl import datafiles

    for option, given in (("--columns", columns), ("--target", target), ("--window", window), ("--val", val)):
        if given is None:
            _fail(f"error: seqdsl data csv: {option} is required (seqdsl data csv FILE.csv --columns A,B "
                  "--target A --window W --horizon H -o TRAIN.npz --val VAL.npz)", 2)
    assert table is not None and val is not None and columns is not None and target is not None
    assert window is not None
    lengths = (_integer("--window", window, example="--window 36"),
               _integer("--horizon", horizon, example="--horizon 12"))
    if val.suffix != ".npz" or val.resolve() == output.resolve():
        _fail(f"error: --val {val}: a second file whose name ends in .npz", 2)
    _data_outputs(output, force)
    try:
        datafiles.check_output(val, force, "--val")
    except datafiles.DataFileError as exc:
        _fail(f"error: {exc.line()}", 2)
    from seqdsl.compilers.training.tables import table_windows

    names = [c.strip() for c in columns.split(",")]
    found = _guard(debug, lambda: table_windows(table, names, target.strip(), *lengths, val_fraction))
    _data_write({val: found.val, output: found.train})
    for path, arrays, rows in ((output, found.train, f"rows 1-{found.split}"),
                               (val, found.val, f"rows {found.split + 1}-{found.rows}")):
        print(f"wrote {path}: x {tuple(arrays['x'].shape)}, target {tuple(arrays['target'].shape)} ({rows})")
    print("normalised with the training rows' mean and std (stored as x_mean, x_std, target_mean, target_std)")


@app.command()
def inspect(spec: Path = typer.Argument(..., help="The spec file."), sets: Optional[list[str]] = SETS,
            batch: int = typer.Option(1, "--batch", min=1, help="B for the costs and the activation memory."),
            seq_len: int = typer.Option(100, "--seq-len", min=1,
                                        help="T (every time axis) for the costs and the activation memory."),
            as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
            max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH, max_repeat: int = MAX_REPEAT,
            root: Optional[Path] = ROOT, debug: bool = DEBUG) -> None:
    """Summarise a spec without building it: inputs, outputs, parameters per module, and per module (nested as the
    calls nest) output shapes, parameters, FLOPs per step and per sequence, and training activation memory."""
    import seqdsl
    from seqdsl.summary import CONVENTION, params_by_module, summarize

    sizes = _parse_sets(sets)
    limits = _limits(max_nodes, max_depth, max_repeat)
    model = _guard(debug, lambda: seqdsl.load(spec, sizes, limits, root=root))
    summary = _guard(debug, lambda: summarize(model, batch, seq_len))
    g = model.graph
    # one source for the table and --json: the inputs, the outputs and each module's parameters
    signature = {"inputs": {n.name: {"shape": list(n.shape), "dtype": n.dtype} for n in model.input_nodes()},
                 "outputs": {k: {"shape": list(g[v].shape), "dtype": g[v].dtype} for k, v in g.outputs.items()},
                 "parameters": [{"module": group.module,
                                 "params": {n: list(shape) for n, shape in group.params}, "count": group.count}
                                for group in params_by_module(model)],
                 "param_count": model.param_count}
    if as_json:
        print(json.dumps({"sizes": model.sizes, **signature, **summary.to_json()}, indent=2))
        return
    out.print(f"[bold]{model.name}[/bold]  sizes: " + ", ".join(f"{k}={v}" for k, v in model.sizes.items()))
    for role in ("inputs", "outputs"):
        for name, value in signature[role].items():
            out.print(f"  {role[:-1]:<6} {name}: {_shape([*value['shape'], value['dtype']])}")
    table = Table("module", "parameters", "count", title_justify="left")
    for group in signature["parameters"]:
        shapes = ", ".join(f"{n} {shape}" for n, shape in group["params"].items())
        table.add_row(group["module"] or "(top)", shapes, f"{group['count']:,}")
    table.add_row("[bold]total[/bold]", "", f"[bold]{signature['param_count']:,}[/bold]")
    out.print(table)
    cost = Table(title=f"costs at B={batch}, T={seq_len} (every time axis)", title_justify="left")
    cost.add_column("module", no_wrap=True)
    cost.add_column("outputs", no_wrap=True)
    for column in ("params", "FLOPs/step", "FLOPs/seq", "activations"):
        cost.add_column(column, justify="right", no_wrap=True)
    for row in summary.modules[1:] + summary.modules[:1]:
        local = row.path.rsplit(".", 1)[-1]
        name = "[bold]total[/bold]" if not row.path else "  " * (row.depth - 1) + (
            row.module if model.scopes[row.path].part else f"{local}: {row.module}")
        outputs = "\n".join(f"{k} {v}" for k, v in row.outputs.items())
        cost.add_row(name, outputs, f"{row.params:,}", _si(row.flops_per_step) if row.flops_per_step else "-",
                     _si(row.flops), _bytes(row.activation_bytes))
    Console(highlight=False, width=max(out.width, 120)).print(cost)  # read whole, even when piped
    out.print(f"[dim]{CONVENTION}[/dim]")


@app.command()
def graph(spec: Path = typer.Argument(..., help="The spec file."),
          output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                help="FILE.svg, FILE.png or FILE.dot [DOT on standard output]."),
          unroll: Optional[int] = typer.Option(None, "--unroll", min=1, max=64,
                                               help="Draw each recurrent block unrolled over N steps (Figure 2)."),
          sets: Optional[list[str]] = SETS,
          module: Optional[str] = typer.Option(None, "--module", help="Draw one module of the spec on its own."),
          depth: Optional[int] = typer.Option(None, "--depth", min=0,
                                              help="Draw module calls nested deeper than K as one box each."),
          max_figure: Optional[int] = typer.Option(
              None, "--max-figure", min=1, metavar="N",
              help="Refuse a figure larger than N nodes, edges and rank crossings in all before Graphviz lays it "
                   "out [2000: within 2 s of CPU]; raising it also lifts the 2 s CPU limit on Graphviz."),
          max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH, max_repeat: int = MAX_REPEAT,
          root: Optional[Path] = ROOT, debug: bool = DEBUG) -> None:
    """Draw a spec as a block diagram: rolled with its delay loops (LeCun's Figure 1), or unrolled in time."""
    import seqdsl
    from seqdsl import render
    from seqdsl.figure import MAX_FIGURE, figure

    fmt = output.suffix.lower().lstrip(".") if output is not None else "dot"
    if fmt not in render.FORMATS:
        _fail(f"error: -o {output}: the file name must end in .svg, .png or .dot", 2)
    sizes = _parse_sets(sets)
    limits = _limits(max_nodes, max_depth, max_repeat)

    def action() -> bytes:
        model = seqdsl.load(spec, sizes, limits, module=module, root=root)
        try:
            cap = None if fmt == "dot" else max_figure or MAX_FIGURE  # DOT text is not laid out here
            cpu = render.CPU_SECONDS if max_figure is None or max_figure <= MAX_FIGURE else None
            return render.render(figure(model, unroll=unroll, depth=depth, max_size=cap), fmt, cpu_seconds=cpu)
        except render.RenderError as exc:
            _fail(f"error: {exc}", 2)

    data = _guard(debug, action)
    if output is None:
        sys.stdout.write(data.decode("utf-8"))
        return
    try:
        render.write(output, data)
    except render.RenderError as exc:
        _fail(f"error: {exc}", 2)
    except OSError as exc:
        _fail(f"error: -o {output}: {exc.strerror or exc}", 2)
    print(f"wrote {output}")


@app.command()
def explain(topic: Optional[str] = typer.Argument(None, help="An error code such as E0402, a spec key such as "
                                                             "recurrent.state.init, or a function such as gelu."),
            keys: bool = typer.Option(False, "--keys", help="Print every spec key with what it means (Markdown).")
            ) -> None:
    """Print the longer story behind an error code, what a key of a spec file means, or what a function does."""
    import re

    from seqdsl.codes import CODES
    from seqdsl.codes import explain as story
    from seqdsl.spec_keys import KEYS, key_doc, key_reference

    if keys:
        print(key_reference())
        return
    if topic is None or not topic.strip():
        _fail("error: give an error code (E0402), a spec key (recurrent.step), a function (gelu) or --keys", 2)
    topic = topic.strip()
    if re.fullmatch(r"[EW]\d{4}", topic.upper()):
        text = story(topic)
        if text is None:
            _fail(f"error: no such code {topic!r}; codes run from {min(CODES)} to {max(CODES)}", 2)
        print(text)
        return
    from seqdsl.ops import OPS, USER_FUNCTIONS

    if topic in USER_FUNCTIONS:
        print(f"{topic}: {OPS[topic].doc}")
        return
    doc = key_doc(topic)
    if doc is None:
        from seqdsl.errors import did_you_mean

        hint = did_you_mean(topic, [*KEYS, *USER_FUNCTIONS]) or "`seqdsl explain --keys` lists the keys"
        _fail(f"error: {topic!r} is not an error code, a spec key or a function\n   = help: {hint}", 2)
    print(f"{topic}: {doc.text}")
    for example in doc.examples:
        print(f"  e.g. {json.dumps(example)}")
    inner = [k.rsplit(".", 1)[1] for k in KEYS if k.rsplit(".", 1)[0] == topic and "." in k]
    if inner:
        print("  keys inside: " + ", ".join(inner))


@app.command()
def schema() -> None:
    """Print the JSON Schema of spec files (for editors: `# yaml-language-server: $schema=...`)."""
    from seqdsl.schema import json_schema

    print(json.dumps(json_schema(), indent=2))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app(prog_name="seqdsl"))  # completion and help name the command, not this file
