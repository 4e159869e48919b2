"""`seqdsl build`: one spec in, a checked directory of deployable files out.

    DIR/model.py              standalone PyTorch source (imports torch only), ``class Model(nn.Module)``
    DIR/weights.safetensors   the weights (initial, or the trained ones given), named as in the spec (no pickle)
    DIR/model.onnx            a length-independent ONNX graph (Scan), checked by onnx.checker; with
                              ``unroll=True`` the explicit graph for one fixed length per time axis instead
    DIR/model.onnx.data       the weights, only for a model whose ONNX file would pass protobuf's 2 GiB limit
    DIR/build.json            what was built: sizes, shapes, parameter count, provider, what the check against
                              PyTorch compared (``check``), the ONNX form of each recurrent block, provenance

Everything is written to a staging directory beside DIR and published only when every check passed, so a
failed build (bad spec, failed check, Ctrl-C, SIGKILL) leaves the previous DIR exactly as it was. A build owns only
what it writes: DIR must be new, empty or an earlier build's (`seqdsl.compilers.publish` has the rule).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

import seqdsl
from seqdsl import files as seqdsl_files
from seqdsl.errors import SpecError
from seqdsl.footprint import MAX_ACTIVATION_BYTES, MAX_STEPS, check_footprint
from seqdsl.ir import Model
from seqdsl.text import plain_text
from seqdsl.version import __version__

from .memory import check_memory, memory_message, out_of_memory
from .parity import ATOL, RTOL, ParityError, check  # noqa: F401 - ParityError: what a failed check raises
from .publish import SIGNATURE, discard, make_staging, output_dir, publish
from .usage import UsageError

if TYPE_CHECKING:
    import onnx

    from .normalise import Normalisation
    from .weights import WeightsSource

TOLERANCE = ATOL  # fp32: onnxruntime vs PyTorch, the absolute part of the tolerance (`seqdsl.compilers.parity`)
MAX_PARAMS = 100_000_000  # refused above this unless asked for: a typo in a size should not fill the memory
#: A serialized ModelProto at or above this many bytes cannot be written as one protobuf (its limit is 2 GiB - 1):
#: the weights then go to ``model.onnx.data`` beside ``model.onnx`` (ONNX external data). Tests lower it.
EXTERNAL_DATA_THRESHOLD = 2**31
EXTERNAL_DATA_FILE = "model.onnx.data"


#: The stages of a build, in order, as `build` reports them to its ``progress`` callback.
STAGES = ("loading PyTorch and ONNX", "checking the spec", "writing model.py", "exporting ONNX",
          "checking model.onnx (onnx.checker)", "running onnxruntime against PyTorch", "publishing")


@dataclass
class BuildResult:
    name: str
    out_dir: str
    files: list[str]
    sizes: dict[str, int]
    param_count: int
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    provider: str
    max_abs_diff: dict[str, float]  # per output, over the values finite in both
    check_shape: dict[str, int] = field(default_factory=dict)
    onnx_nodes: int = 0
    warnings: list[str] = field(default_factory=list)
    # what model.onnx really holds, read off the written file: per recurrent block LSTM/GRU/RNN (ONNX's own op),
    # Scan, Loop or unrolled; onnx_form is the forms present joined by "+" ("GRU+Scan"), or "none" (no recurrence)
    onnx_form: str = "none"
    onnx_blocks: dict[str, str] = field(default_factory=dict)
    # per block: the form chosen (native, scan, loop, unrolled), why (table, probe, default, forced, only form),
    # the candidates with their figures, the onnxruntime version it was chosen for (seqdsl.compilers.onnx_form)
    onnx_choice: dict[str, dict[str, Any]] = field(default_factory=dict)
    unrolled_lengths: dict[str, int] | None = None  # {"T": 8}: one per unrolled time axis ({} for fixed-step loops)
    onnx_external_data: bool = False  # weights in model.onnx.data (the model is above protobuf's 2 GiB)
    provenance: dict[str, Any] = field(default_factory=dict)  # versions, opset, IR version, spec hashes, seed
    built_by: str = SIGNATURE  # the mark of a directory a build made (and may replace): see seqdsl.compilers.publish
    triton: str | None = None  # the Triton model folder written (REPO/<name>), with --triton
    # what the check compared: the rule, atol, rtol, and per output the worst abs and rel difference, how many
    # values were not finite (alike in both) and how many disagree (0: a build is only written when none do)
    check: dict[str, Any] = field(default_factory=dict)
    # the statistics the training data was normalised with, and whether model.onnx takes raw values (raw_io)
    normalisation: dict[str, Any] | None = None
    # `seqdsl train`'s build: which checkpoint gave the weights (best or last), its step, the monitored value
    training: dict[str, Any] | None = None
    threads: str = ""  # the check run's threads as the rule (threads.py) chose them, and why; not in build.json


def time_axes(model: Model) -> list[str]:
    """The symbolic axes of the model's inputs other than the batch ``B`` (``T``, ``S``, ...), sorted."""
    return sorted({d for n in model.input_nodes() for d in n.shape if isinstance(d, str)} - {"B"})


def loop_axes(model: Model) -> list[str]:
    """The time axes that recurrent loops iterate over (what `seqdsl.passes.unroll` needs a length for)."""
    from seqdsl.ir import all_nodes, loop_of

    return sorted({loop_of(n).time for n in all_nodes(model.graph) if n.op == "loop" and loop_of(n).steps is None})


def _axis_lengths(model: Model, batch: int, steps: int, lengths: dict[str, int] | None = None) -> dict[str, int]:
    others = [a for a in time_axes(model) if a != "T"]
    return {"B": batch, "T": steps, **{name: steps + 2 + i for i, name in enumerate(others)}, **(lengths or {})}


def example_inputs(model: Model, batch: int, steps: int, seed: int = 0,
                   lengths: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for ``model`` with B=batch and T=steps; other time axes (S, ...) get other lengths so
    that mixing them up cannot go unnoticed, unless ``lengths`` gives them (``{"S": 6}``; it may give T too).
    Token ids stay below the embedding's vocabulary; a block's ``lengths:`` are 1 .. the sequence's length."""
    rng = np.random.default_rng(seed)
    axes = _axis_lengths(model, batch, steps, lengths)
    lengths_of = _lengths_inputs(model)
    out: dict[str, np.ndarray] = {}
    for node in model.input_nodes():
        shape = [axes[d] if isinstance(d, str) else d for d in node.shape]
        if node.name in lengths_of:  # a `lengths:` input: 1 .. the length of the sequences it measures
            axis = lengths_of[node.name]
            out[node.name] = rng.integers(1, (axes[axis] if isinstance(axis, str) else axis) + 1, size=shape,
                                          dtype=np.int64)
        elif node.dtype == "int64":
            out[node.name] = rng.integers(0, _vocab_for(model, node.name), size=shape, dtype=np.int64)
        else:
            out[node.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _lengths_inputs(model: Model) -> dict[str, str | int]:
    """Inputs that are a block's ``lengths:`` -> the time axis of the sequence they measure."""
    from seqdsl.ir import all_nodes

    graph = model.graph
    return {n.inputs[0]: graph[n.inputs[1]].shape[1] for n in all_nodes(graph) if n.op == "sequence_mask"
            and n.inputs[0] in model.inputs and n.inputs[1] in graph.nodes}


def _vocab_for(model: Model, input_name: str) -> int:
    """The smallest table an id input indexes (ids must stay in range of every lookup that reads them)."""
    from seqdsl.ir import all_nodes

    sizes = [model.graph[n.inputs[0]].shape[0] for n in all_nodes(model.graph)
             if n.op == "embedding" and n.inputs[1] == input_name and n.inputs[0] in model.graph.nodes]
    return int(min(sizes)) if sizes else 2


def check_size(model: Model, max_params: int) -> None:
    """Refuse a model above ``max_params`` parameters before anything is allocated (E0410)."""
    if model.param_count > max_params:
        biggest = max(model.params.values(), key=lambda p: p.size)
        raise SpecError("E0410", f"the model has {model.param_count:,} parameters, above the limit of {max_params:,}",
                        biggest.loc, found=f"largest: `{biggest.name}` {list(biggest.shape)} ({biggest.size:,})",
                        hint="check the sizes; to build it anyway, raise --max-params")


def run_torch(net: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    net.eval()  # dropout off: the ONNX graph is the inference graph
    with torch.no_grad():
        out = net(*(torch.from_numpy(inputs[n]) for n in net.input_names))
    out = out if isinstance(out, tuple) else (out,)
    return {name: t.detach().numpy() for name, t in zip(net.output_names, out)}  # an output may be a parameter


def check_lengths(model: Model, axis_lengths: dict[str, int] | None) -> None:
    """Refuse a length for an axis the model's inputs do not have, or below 1 (`UsageError`)."""
    axes = time_axes(model)
    for name, length in (axis_lengths or {}).items():
        if name == "B":
            raise UsageError("--axis-len B: B is the batch axis; give its size with --batch")
        if name not in axes:
            have = f"its time axes: {', '.join(axes)}" if axes else "it has no time axis"
            raise UsageError(f"--axis-len {name}: the model `{model.name}` has no axis `{name}`; {have}")
        if not isinstance(length, int) or length < 1:
            raise UsageError(f"--axis-len {name}: a length is a positive integer, got {length!r}")


def _fix_dims(proto: "onnx.ModelProto", lengths: dict[str, int]) -> None:
    """Make the unrolled time axes of the graph's inputs and outputs fixed dimensions, so that onnxruntime
    refuses a sequence of another length (an unrolled graph would silently read only its first T steps)."""
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in lengths:
                dim.dim_value = lengths[dim.dim_param]  # clears dim_param (a oneof)


def serialized_size(proto: "onnx.ModelProto") -> int:
    """An upper estimate of ``proto``'s serialized size, computed part by part: protobuf cannot size (nor
    serialize) a message above 2 GiB, which is exactly the case this is for. Each part is below 2 GiB unless one
    tensor is; such a tensor counts as too large."""
    from google.protobuf.message import EncodeError

    g = proto.graph
    parts = [*g.initializer, *g.sparse_initializer, *g.node, *g.input, *g.output, *g.value_info, *proto.functions,
             *proto.metadata_props, *proto.opset_import]
    try:
        return sum(part.ByteSize() + 16 for part in parts) + 1024  # + tags and lengths, names, producer
    except EncodeError:
        return 2**63


def save_onnx(proto: "onnx.ModelProto", path: Path, threshold: int | None = None) -> bool:
    """Check and write ``proto`` to ``path``; at or above ``threshold`` bytes (default
    `EXTERNAL_DATA_THRESHOLD`) the tensors go to `EXTERNAL_DATA_FILE` in the same folder. Returns whether they did.

    A proto above 2 GiB cannot be serialized, so that one is checked by onnx.checker from the path, after saving.
    """
    import onnx

    limit = EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
    if serialized_size(proto) < limit:
        onnx.checker.check_model(proto, full_check=True)
        seqdsl_files.write(path, proto.SerializeToString())
        return False
    with seqdsl_files.replacing(path, path.with_name(EXTERNAL_DATA_FILE)) as (model_tmp, _):
        onnx.save(proto, str(model_tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=EXTERNAL_DATA_FILE)
        onnx.checker.check_model(str(model_tmp), full_check=True)
    return True


def build(spec: str | Path, out_dir: str | Path | None = None, sizes: dict[str, int] | None = None,
          steps: int = 7, batch: int = 3, seed: int = 0, tolerance: float = TOLERANCE, rel_tolerance: float = RTOL,
          provider: str | None = None, max_params: int = MAX_PARAMS, unroll: bool = False,
          axis_lengths: dict[str, int] | None = None, optimize_passes: bool = True,
          max_memory: int = MAX_ACTIVATION_BYTES, max_steps: int = MAX_STEPS,
          progress: Callable[[str], None] | None = None, limits: seqdsl.Limits | None = None,
          weights: "WeightsSource | None" = None, triton: str | Path | None = None,
          onnx_form: list[str] | None = None, normalisation: "Normalisation | str | Path | None" = None,
          raw_io: bool = False, threads: int | None = None,
          training: dict[str, Any] | None = None, root: str | Path | None = None) -> BuildResult:
    """Compile ``spec`` into ``out_dir`` (default ``build/<name>``); raises SpecError for a bad spec.

    ``progress`` is called with the name of each stage of `STAGES` as it starts: the command line shows it on a
    terminal.

    ``optimize_passes=False`` skips seqdsl's passes (recognition, fusion, hoisting): model.py then computes the
    spec's equations exactly as written, one line per equation, and model.onnx is a plain Scan of them.

    ``steps`` is T for the check against PyTorch; ``axis_lengths`` gives other time axes their lengths (``{"S": 6}``;
    by default S, ... differ from T so that mixing them up shows). With ``unroll`` model.onnx is the explicit
    unrolled graph (no Scan: what CUDA graph capture needs) for every recurrent time axis at its length
    (``axis_lengths`` or else ``steps``); it runs at that length only (those axes are fixed in its signature),
    at any B, and the parameters stay one shared initializer each.

    ``weights`` (a ``.safetensors`` path or a state_dict-like mapping of tensors or arrays, keyed by the spec's
    parameter names) replaces the initial random weights: model.py's weights.safetensors and model.onnx then carry
    them, and the check against PyTorch runs with them. Weights that do not fit the spec are one SpecError (E0603)
    listing every problem with the line declaring the parameter, raised before anything is written.

    ``onnx_form`` forces the ONNX form of recurrent blocks (``["scan"]``, ``["enc=native"]``); by default each
    standard cell gets the form that is fastest in the installed onnxruntime (`seqdsl.compilers.onnx_form`), and
    build.json's ``onnx_choice`` says which and why.

    ``normalisation`` (`seqdsl.compilers.normalise`: the statistics the training data was normalised with, or a data
    file that carries them, read with `seqdsl.compilers.normalise.from_file`) is recorded
    in build.json; with ``raw_io`` it is also folded into model.onnx, which then takes and returns raw values
    (the check against PyTorch runs in the normalised units). ``raw_io`` without statistics is a UsageError.

    ``triton`` (a folder) also writes the checked model.onnx into a Triton Inference Server model repository:
    ``triton/<name>/1/model.onnx`` and ``triton/<name>/config.pbtxt`` (see `seqdsl.compilers.triton`).

    Before anything is allocated: at most ``max_params`` parameters, and the check run at most ``max_memory``
    bytes of values and ``max_steps`` loop steps (`seqdsl.footprint`), all within this machine's memory.
    ``limits`` bounds how far the spec may expand while it is lowered (`seqdsl.Limits`).
    """
    if threads is not None:
        from .threads import choose_threads

        choose_threads(0.0, threads)  # a bad count is refused before any work

    def stage(name: str) -> None:
        assert name in STAGES, name
        if progress is not None:
            progress(name)

    stage("loading PyTorch and ONNX")
    import torch
    from safetensors.torch import save_file

    from seqdsl.passes import optimize
    from seqdsl.passes import unroll as unroll_pass
    from seqdsl.passes.unroll import UnrollError

    from .build_record import choice_record, onnx_form as form_word, onnx_forms, provenance, training_record
    from .normalise import fold, from_file, normalised_outputs, raw_inputs
    from .onnx_export import export, set_weights
    from .onnx_form import FormError, choose
    from .onnx_runtime import run
    from .torch_module import module_class
    from .triton import check_repository, model_dir
    from .threads import choose_threads, describe, step_work
    from .weights import read_weights

    if raw_io and normalisation is None:
        raise UsageError("--raw-io: the data carries no normalisation statistics (x_mean, x_std, target_mean, "
                         "target_std: what `seqdsl data csv` writes)")
    early = output_dir(out_dir, spec) if out_dir is not None else None  # a wrong -o: said before the spec is read
    if triton is not None:
        check_repository(triton, early)  # and so is a --triton REPO that cannot be written, or inside -o
    stage("checking the spec")
    model = seqdsl.load(spec, sizes, limits, root=root)
    check_size(model, max_params)
    check_lengths(model, axis_lengths)
    lengths = dict(axis_lengths or {})
    wanted = {axis: lengths.get(axis, steps) for axis in loop_axes(model)} if unroll else {}
    fp = check_footprint(model, _axis_lengths(model, batch, steps, {**wanted, **lengths}), max_memory, max_steps)
    check_memory(model, fp)
    trained = read_weights(model, weights) if weights is not None else None
    if isinstance(normalisation, (str, Path)):
        normalisation = from_file(normalisation, model)
    unrolled_lengths: dict[str, int] | None = None
    exported = model
    if unroll:
        # the default passes first, so that step work hoisted out of a loop (input projections) stays one
        # product over the whole sequence instead of T small ones; export runs them again, to no effect
        try:
            exported, changed = unroll_pass(optimize(model) if optimize_passes else model, wanted)
        except UnrollError as exc:  # what the request asks cannot be done; anything else is a seqdsl bug
            raise UsageError(f"--unroll: {exc}") from None
        if changed:
            unrolled_lengths = wanted
            lengths = {**wanted, **lengths}
    out = Path(out_dir) if out_dir is not None else Path("build") / model.name
    target = output_dir(out, spec)  # refused here, before anything runs, unless a build may publish there
    triton_dir = model_dir(Path(triton), model.name, target) if triton is not None else None
    inputs = example_inputs(model, batch, steps, seed, lengths)
    try:  # the probe, where one runs, times the check run's inputs (zero weights: the speed is the same)
        choices = choose(model, onnx_form, optimize=optimize_passes, unroll=unrolled_lengths is not None,
                         probe_inputs=inputs)
    except FormError as exc:
        raise UsageError(str(exc)) from None
    native = {c.loop for c in choices.values() if c.form == "native"}
    warnings = [w.format() for w in model.warnings]
    if unroll and unrolled_lengths is None:
        warnings.append(f"note: --unroll: `{model.name}` has no recurrent loop to unroll; model.onnx is the same "
                        "graph at every length")
    staging = make_staging(target)
    try:
        stage("writing model.py")
        cls = module_class(model, staging / "model.py", optimize=optimize_passes, native_cells=optimize_passes)
        torch.manual_seed(seed)
        net = cls()
        if trained is not None:
            net.load_state_dict(trained)
        weights = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        # one metadata key: safetensors writes several in no fixed order, and builds should be byte-reproducible
        with seqdsl_files.replacing(staging / "weights.safetensors") as (weights_tmp,):
            save_file(weights, str(weights_tmp),
                      metadata={"seqdsl": f"{__version__}; spec {plain_text(Path(spec).name, 255)}"})
        stage("exporting ONNX")
        proto = export(exported, optimize=optimize_passes, native_cells=native if optimize_passes else False)
        set_weights(proto, {k: v.numpy() for k, v in weights.items()})
        if raw_io and normalisation is not None:
            fold(proto, normalisation)
        if unrolled_lengths is not None:
            _fix_dims(proto, unrolled_lengths)
        onnx_nodes = len(proto.graph.node)
        stage("checking model.onnx (onnx.checker)")
        external = save_onnx(proto, staging / "model.onnx")
        del proto  # may be gigabytes; the runtime reads the file
        written = _read_structure(staging / "model.onnx")
        forms = onnx_forms(written, model)
        stage("running onnxruntime against PyTorch")
        chosen, why = choose_threads(step_work(model.param_count, batch), threads)
        before = torch.get_num_threads()
        torch.set_num_threads(chosen)
        try:
            expected = run_torch(net, inputs)
            folded = raw_io and normalisation is not None  # the check then runs in the normalised units
            got = run(str(staging / "model.onnx"), raw_inputs(inputs, normalisation) if folded else inputs, provider,
                      threads=chosen)
        finally:
            torch.set_num_threads(before)
        outputs = normalised_outputs(got.outputs, normalisation) if folded else got.outputs
        # ParityError (a seqdsl bug) unless they agree as numbers; inf/NaN alike in both is a warning
        checked, overflow = check(model, weights, inputs, expected, outputs, tolerance, rel_tolerance)
        if overflow is not None:
            warnings.append(overflow)
        g = model.graph
        fixed = unrolled_lengths or {}
        dims = lambda shape: [fixed.get(d, d) if isinstance(d, str) else d for d in shape]  # noqa: E731
        used = {d for n in model.input_nodes() for d in n.shape if isinstance(d, str)}
        files = ["model.py", "weights.safetensors", "model.onnx", *([EXTERNAL_DATA_FILE] if external else []),
                 "build.json"]
        result = BuildResult(
            name=model.name, out_dir=str(out), files=files,
            sizes=model.sizes, param_count=model.param_count,
            inputs={n.name: [*dims(n.shape), n.dtype] for n in model.input_nodes()},
            outputs={k: [*dims(g[v].shape), g[v].dtype] for k, v in g.outputs.items()},
            provider=got.provider, max_abs_diff=checked.max_abs_diff,
            check_shape={k: v for k, v in _axis_lengths(model, batch, steps, lengths).items() if k in used | {"B"}},
            onnx_nodes=onnx_nodes, warnings=warnings,
            onnx_form=form_word(forms), onnx_blocks=forms, onnx_choice=choice_record(choices, forms),
            unrolled_lengths=unrolled_lengths,
            onnx_external_data=external, provenance=provenance(model, written, seed),
            triton=str(triton_dir) if triton_dir is not None else None, check=checked.record(),
            normalisation=normalisation.record(raw_io) if normalisation is not None else None,
            training=training_record(training) if training is not None else None,
            threads=describe(chosen, why) if threads is None else "")
        record = asdict(result)
        del record["threads"]  # how this machine ran the check, not what was built
        seqdsl_files.write_text(staging / "build.json", json.dumps(record, indent=2) + "\n")
        stage("publishing")
        result.warnings += publish(staging, target)
        if triton_dir is not None:  # only once DIR holds this build: the copy is of what was published
            _copy_to_triton(triton_dir, target, model.name, [f for f in files if f.startswith("model.onnx")],
                            result.out_dir)
        return result
    except Exception as exc:
        if out_of_memory(exc):  # the model passed every limit but does not fit (another process, ulimit -v)
            raise UsageError(memory_message(model, fp)) from None
        raise
    finally:
        discard(staging)  # a failed build's files; after publishing, nothing or what `publish` kept on purpose


def _copy_to_triton(triton_dir: Path, built: Path, name: str, onnx_files: list[str], shown: str) -> None:
    """Write the published build's ONNX files into the Triton repository (`seqdsl.compilers.triton`)."""
    from .triton import write_repository

    try:
        write_repository(triton_dir, built, name, onnx_files)
    except OSError as exc:  # checked before the build; what changed since is the machine's, not seqdsl's
        raise UsageError(f"--triton {triton_dir}: {shown} was built, but the Triton copy failed: "
                         f"{exc.strerror or exc}") from None


def _read_structure(path: Path) -> "onnx.ModelProto":
    """The written model without its weights (external or not): what the file holds, for build.json."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        tensor.ClearField("raw_data")
    return proto
