"""Every error code seqdsl reports, with a title and the longer story `seqdsl explain CODE` prints.

Codes are stable: a code keeps its meaning for good; new mistakes get new codes. Ranges:
E01xx reading the YAML, E02xx the schema, E03xx names and expressions, E04xx the graph (shapes, cycles,
states), E05xx imports, E06xx building, E07xx training. W0xxx are warnings: the spec builds, but probably not as meant.
"""

from __future__ import annotations

CODES: dict[str, tuple[str, str]] = {
    # -- E01xx: the YAML text
    "E0101": ("spec is not valid UTF-8", "Spec files are UTF-8 text. Re-save the file as UTF-8."),
    "E0102": ("NUL or control character in spec",
              "The file holds a NUL byte or another control character, which YAML does not allow. It is often a "
              "binary file given by mistake, or a copy-paste from a terminal. Inside strings, after YAML's "
              "escapes, `\"\\0\"` (NUL) is refused too, in names, equations and import paths."),
    "E0103": ("spec file too large", "A spec file, and the files it imports together, are capped at 500,000 bytes and 15,000 YAML nodes; a spec describes a network, not its data."),
    "E0104": ("tab character in indentation",
              "YAML indents with spaces only. Configure your editor to insert spaces in .yaml files."),
    "E0105": ("YAML syntax error",
              "The text is not valid YAML. A common case: an equation inside a flow mapping `{...}` that contains "
              "`[`, `]` or `,` (as `h[t-1]` does) must be quoted, or the mapping written one key per line."),
    "E0106": ("empty spec", "The file holds nothing but comments or whitespace."),
    "E0107": ("several YAML documents in one spec", "A spec file holds one document: remove the second `---`."),
    "E0108": ("spec root is not a mapping", "A spec is a mapping of sections: `sizes:`, `inputs:`, `params:`, ..."),
    "E0109": ("duplicate key",
              "A key appears twice in one mapping. YAML loaders usually keep the last one silently; seqdsl refuses, "
              "since one of the two is a mistake. Keys are names read as Python reads identifiers (NFKC): `ﬁ` "
              "and `fi` are the same key."),
    "E0110": ("YAML tags are not allowed",
              "Tags such as `!!python/object` can make YAML loaders construct objects or run code. Specs are "
              "untrusted text: seqdsl never constructs anything from a tag and refuses them all."),
    "E0111": ("mapping key is not a plain string", "Keys are names: write them as plain text."),
    "E0112": ("too many nodes after expanding aliases",
              "Aliases (`*name`) repeat a subtree; nested ones can grow exponentially (the 'billion laughs' bomb). "
              "seqdsl stops at 15,000 nodes (a large model spec has a few hundred)."),
    "E0113": ("alias used inside its own anchor", "An anchor refers to itself, which would make an infinite value."),
    "E0114": ("nesting too deep", "Specs nest at most 64 levels deep."),
    "E0115": ("ambiguous number",
              "`010`, `0x1F`, `0o17` or `1_000` mean different numbers in YAML 1.1 and 1.2. Write the decimal "
              "number (`10`), or quote it to keep a string."),
    "E0116": ("number out of range", "Integers are limited to 10**18 in size; floats must be finite."),
    "E0117": ("value does not fit its explicit tag", "`!!int abc` and the like: the value cannot have that type."),
    "E0118": ("spec file not found", "Check the path; the hint names a similar file when there is one."),
    "E0119": ("merge keys (<<) are not supported", "Write the keys out, or define a module and call it."),
    "E0120": ("cannot read spec file", "The path is a directory, or the file cannot be read."),
    # -- E02xx: the schema
    "E0201": ("unknown key", "The key is not part of the spec schema (`seqdsl schema` prints it). Misspellings get "
                             "a suggestion; seqdsl never ignores a key it does not know."),
    "E0202": ("missing required key", "The section needs this key; the hint shows an example."),
    "E0203": ("wrong type or value", "The value has the wrong type (a list where a mapping is expected, a number "
                                     "where a name is expected) or is not one of the allowed words."),
    # -- E03xx: names and expressions
    "E0301": ("unknown name", "An equation refers to a name that is not an input, parameter, size, state or "
                              "equation of the module. Names are case-sensitive."),
    "E0302": ("expression too large", "Equations are at most 2,000 characters and 50 levels deep; a number is 0 or "
                                      "bounded. Split long equations into several."),
    "E0303": ("syntax error in expression", "The equation does not parse. Allowed: names, numbers, + - * / @, "
                                            "function calls, `h[t-1]`, `call.output`."),
    "E0304": ("construct not allowed in an equation",
              "Equations are parsed with an allow-list and never evaluated as Python: comprehensions, lambdas, "
              "attribute access beyond `call.output`, strings and the like are refused."),
    "E0305": ("bad use of a delay", "Only `name[t-1]`, the previous step's value of a state, may be indexed, and "
                                    "only inside a recurrent step."),
    "E0306": ("bad size", "Sizes are positive integers: `0`, `-4`, `3 / 2` (not whole) and `h / 0` are refused."),
    "E0307": ("unknown size", "A size expression names a size that is not declared (or declared later)."),
    "E0308": ("name defined twice", "Each name is defined once per module: input, parameter, equation, or the "
                                    "learned initial state `<state>_0` of `init: learned`. The model's outputs are "
                                    "named apart from its inputs and parameters too: all are ONNX value names."),
    "E0309": ("unknown size override", "`--set NAME=VALUE` (or `sizes=` in the API) names no size of the spec."),
    "E0310": ("bad name", "Names are identifiers: letters, digits and `_`, not a Python keyword, not a function "
                          "name, not `B`, `T` or `t`, and not an attribute torch.nn.Module already uses."),
    "E0311": ("bad chunk", "`a, b: chunk(x, 2)`: as many names on the left as pieces, and an axis that divides."),
    "E0312": ("delay of a non-state", "`x[t-1]` needs `x` to be declared under `state:`."),
    "E0313": ("module call inside an expression", "Call a module as a whole equation: `enc: LSTM(x)`, then use "
                                                  "`enc.y`."),
    "E0314": ("unknown function", "The function is not one of seqdsl's primitives nor a module in scope."),
    "E0315": ("bad function argument", "A function got an argument it does not take, or a non-number where a "
                                       "number (an axis, a head count, a probability) is needed."),
    "E0316": ("bad module call", "A module call has too many or missing inputs, or an argument that is neither an "
                                 "input, a size, `repeat` nor `direction`."),
    "E0317": ("bad initialiser", "A parameter's `init:` does not fit it: a gain with an initialiser that takes "
                                 "none (uniform, normal, zeros, ones, a constant), a gain that is not a positive "
                                 "number, a matrix initialiser (orthogonal, identity, xavier_uniform, "
                                 "kaiming_uniform) on a vector, `identity` on more than two axes, a non-finite "
                                 "constant, or `blocks: k` that does not divide the first axis."),
    # -- E04xx: the graph
    "E0401": ("argument of the wrong shape", "A module call passes a value whose shape or dtype does not match the "
                                             "callee's input declaration."),
    "E0402": ("cycle without a delay", "Equations depend on each other in a loop that does not pass through a "
                                       "previous step's state (`h[t-1]`): the value could never be computed."),
    "E0403": ("shape or dtype mismatch", "An operation got values whose shapes do not fit; the message gives both "
                                         "shapes and the axis, and notes say where the values come from."),
    "E0404": ("bad axis", "`B` (batch) comes first and only first; a sequence is [B, T, ...]; parameters have no "
                          "B or T axis; a recurrent block iterates over one time axis."),
    "E0405": ("state without an update", "Every state needs an equation under `step:` computing its new value."),
    "E0406": ("encoder reads the state", "Enc(x(t)) sees only the input: equations under `encoder:` may not read "
                                         "a state; move them to `step:`."),
    "E0407": ("no batch size for a state", "A zero or learned initial state takes B from a module input; give the "
                                           "module an input, or initialise the state from one."),
    "E0408": ("bad output", "An output is a tensor the module computes: a recurrent module returns equations of "
                            "its block (`h` every step, `final(h)` or `last(h)`; not an input, which is no step "
                            "value); no module returns a constant (a number or a size has no batch axis)."),
    "E0409": ("nothing to iterate over", "A recurrent block iterates over a [B, T, ...] input, or runs a fixed "
                                         "`steps: L` when it has none (never both)."),
    "E0410": ("model too large", "The parameter count, computed before anything is allocated, is above "
                                 "`--max-params`. Raise the limit if the size is intended."),
    "E0420": ("model grows past the node budget",
              "Lowering inlines every module call and stacks every `repeat=` copy, so a small spec can describe a "
              "huge graph: a module that calls the previous one twice, twenty times over, is 2**20 copies. seqdsl "
              "counts the IR nodes as it makes them and stops at 30,000 (the shipped transformer is 282), naming "
              "the calls being inlined. If the model is meant to be that large, raise the limit: "
              "`--max-nodes N` on the command line, `limits=seqdsl.Limits(nodes=N)` in Python."),
    "E0421": ("module calls nested too deep",
              "A module calls a module that calls a module ... more than 32 levels deep. Raise the limit with "
              "`--max-depth N` (`seqdsl.Limits(depth=N)`) if the nesting is meant."),
    "E0422": ("repeat count above the limit",
              "`repeat=N` stacks N copies of a module; seqdsl refuses N above 1,000 before making any (a size set "
              "by mistake, `--set depth=1000000000`, would otherwise never finish). Raise the limit with "
              "`--max-repeat N` (`seqdsl.Limits(repeat=N)`)."),
    "E0423": ("figure too large to lay out",
              "`seqdsl graph` counts what Graphviz would lay out (nodes, edges, and the ranks long edges pass "
              "through) and refuses a figure above 2,000 before Graphviz starts, since its time grows faster than "
              "the figure; under the cap a figure takes at most 2 s of CPU. Draw less with `--depth K` (module "
              "calls below K levels as one box), `--module NAME` or a smaller `--unroll`, or raise the cap with "
              "`--max-figure N`."),
    # -- E05xx: imports
    "E0501": ("module imported and defined", "A module name is both under `imports:` and `modules:`."),
    "E0502": ("import path not allowed", "Imports are relative paths that stay inside the spec's folder, or the "
                                         "folder named by `--root DIR` (no absolute paths, no `..` past it, no "
                                         "symlinks out), or `std:` paths, "
                                         "that the file system can follow (no name above 255 bytes, no symlink "
                                         "loop)."),
    "E0503": ("import cycle", "Files import each other in a loop; the message shows the chain."),
    "E0504": ("imports nested too deep", "Imports nest at most 16 files deep."),
    "E0505": ("no such module in the file", "`file.yaml#Name` needs `Name` under that file's `modules:`."),
    "E0506": ("imported file not found", "Check the path, relative to the importing file."),
    "E0507": ("import root not usable", "`--root DIR` (`root=` in Python) names the folder imports may read from: "
                                        "it must be a folder that holds the spec. By default it is the spec's own "
                                        "folder."),
    # -- E06xx: building
    "E0601": ("check run too large", "Before anything runs, the build computes from the IR the memory its check run "
                                     "needs for values (inputs, activations, outputs, at --batch and --seq-len): "
                                     "above `--max-memory` (4G by default) it is refused, and so is a model whose "
                                     "parameters and values cannot fit in this machine's memory at all. Check the "
                                     "sizes and lengths; raise --max-memory if they are intended."),
    "E0602": ("too many loop steps", "The check run's loops would take more steps in all than `--max-steps` "
                                     "(100,000 by default): a `steps: K` with a huge K, or a huge --seq-len. Check "
                                     "the sizes; raise --max-steps if they are intended."),
    "E0603": ("weights do not fit the spec", "The weights given to `build --weights` (or `build(weights=...)`) are "
                                             "keyed by the spec's parameter names, one float tensor per parameter "
                                             "of the declared shape, every value finite: what "
                                             "`to_module(model).state_dict()` gives, saved with safetensors. The "
                                             "error lists every missing, unexpected, misshaped, non-float or "
                                             "non-finite entry with the line declaring the parameter."),
    "E0604": ("unreadable weights file", "Weights are read from safetensors files only (never pickle); the file "
                                         "is missing, truncated, or not safetensors."),
    # -- E07xx: training (`seqdsl train`): the data files and the options
    "E0701": ("cannot read data file",
              "Training data is an .npz file of plain numeric arrays (numpy.savez). It is read with pickling off: "
              "object arrays are refused, as are files that are not .npz archives or would unpack to more than the "
              "size limit."),
    "E0702": ("array missing from the data",
              "The data file needs one array per model input (keyed by the input's name) and the targets (keyed by "
              "`--target`, default `target`)."),
    "E0703": ("array of the wrong dtype",
              "A float32 input takes a floating array, an int64 input (token ids, lengths) an integer one; "
              "cross-entropy targets are integer class ids, MSE targets floating values."),
    "E0704": ("array of the wrong shape",
              "Each array has the rank and the fixed sizes its input declares; B (the number of examples) and each "
              "time axis take one value across all arrays; targets have the shape of the output the loss reads "
              "(without the classes axis for cross entropy)."),
    "E0705": ("value out of range",
              "Token ids index an embedding table and class ids the output's classes: both lie in [0, size). "
              "Sequence lengths lie in [1, T]. Floating data is finite."),
    "E0706": ("loss is not finite",
              "The training loss became NaN or infinite. Lower the learning rate, keep gradient clipping on "
              "(`--clip`), and check the data's scale."),
    "E0707": ("bad training option",
              "An option of `seqdsl train` (or the spec's `train:` section) does not fit the model or the data: an "
              "output it does not have, a loss that does not fit the targets' dtype, both steps and epochs, "
              "`--resume` with no checkpoint."),
    "E0708": ("checkpoint does not fit",
              "`--resume` reads the checkpoint of the same spec, sizes and optimiser; this one was written for "
              "another model (other parameter names or shapes) or another optimiser."),
    "E0709": ("table does not fit",
              "`seqdsl data csv` reads a .csv (UTF-8, a header line) or .parquet table whose rows are in time "
              "order. The columns named by --columns and --target exist and hold finite numbers in every row; the "
              "training part (before the last --val-fraction of the rows) and the validation part each hold at "
              "least one window of --window + --horizon rows; no column is constant over the training part; the "
              "file, its rows and the windows written stay within the size limits. The error names the row and "
              "the column (for a CSV its line and character column)."),
    "E0710": ("normalisation statistics do not fit",
              "A data file may carry the statistics its arrays were normalised with, `<array>_mean` and "
              "`<array>_std` (what `seqdsl data csv` writes: x_mean, x_std, target_mean, target_std): both or "
              "neither, float, finite, std above 0, of shape () or the array's last axis, for a float input or the "
              "targets of an MSE loss; the validation file's equal to the training file's. `seqdsl train` records "
              "them in build.json, and with --raw-io folds them into model.onnx."),
    # -- warnings
    "W0401": ("unused value", "An equation or input is never used by any output. Remove it, or output it."),
    "W0402": ("unused parameter", "A declared parameter that no output depends on gets no gradient, so nothing "
                                  "trains it. model.py keeps it as a buffer (it stays in the state_dict and the "
                                  "weights file, but not in parameters()), so DistributedDataParallel, which "
                                  "expects a gradient for every parameter, still works. Remove it, or use it."),
}


def title(code: str) -> str:
    return CODES[code][0]


def explain(code: str) -> str | None:
    """The longer story of ``code``, or None when there is no such code."""
    entry = CODES.get(code.upper())
    if entry is None:
        return None
    return f"{code.upper()}: {entry[0]}\n\n{entry[1]}"
