"""Lowering of a recurrent module: one ``loop`` node in the parent graph, the step graph as its body.

The step is G of z(t) = G(h(t), z(t-1), w): its equations (``encoder:``, ``step:``, ``decoder:``) are lowered into
the body with the sequences sliced at step t (``step_input``), the previous states as delays (``state``) and
whole non-sequence inputs (``capture``). Then: every state must have an update of its declared shape; the
encoder may not read a state; initial states are made (zeros, learned, or an input); padding is masked when the
block has ``lengths``; a ``steps`` block may ``stop`` early; the outputs say which step values leave the loop.
"""

from __future__ import annotations

from . import expr as E
from .errors import SpecError, did_you_mean
from .ir import Graph, Loop, LoopOutput, Node, Param, Shape
from .lower import OUTPUT_SELECTORS, Env, ModuleLowering, Path, Value, check_output
from .naming import learned_state, normalize
from .ops import ShapeError, fmt, infer

STATE_DTYPE = "float32"  # a state has no dtype of its own: its initial value and its update must be this


class RecurrentLowering:
    """A recurrent module: the loop node in the parent graph, and its step graph as the loop's body."""

    def __init__(self, owner: ModuleLowering, inputs: dict[str, str]):
        self.owner, self.inputs = owner, inputs
        self.rec = owner.mod.recurrent  # type: ignore[union-attr]
        self.graph = owner.graph

    def run(self) -> dict[str, str]:
        owner, rec = self.owner, self.rec
        decls = owner.mod.inputs
        over = [normalize(o) for o in rec.over] if rec.over is not None else [
            k for k, d in decls.items() if d.shape[:2] == ["B", "T"]]
        for name in over:
            if name not in decls:
                raise SpecError("E0301", f"`over` names `{name}`, which is not an input", owner.loc("recurrent", "over"),
                                hint=did_you_mean(name, decls))
            shape = self.graph[self.inputs[name]].shape
            if len(shape) < 2 or shape[0] != "B" or not isinstance(shape[1], str):
                raise SpecError("E0404", f"`{name}` is iterated over but is not a sequence", owner.loc("recurrent", "over"),
                                expected="shape [B, T, ...]", found=fmt(shape))
        times = {self.graph[self.inputs[name]].shape[1] for name in over}
        if len(times) > 1:
            raise SpecError("E0404", "the sequences of one recurrent block must have the same time axis",
                            owner.loc("recurrent"), found=", ".join(sorted(map(str, times))),
                            hint="iterate over one time axis per block; a decoder over T reads an encoder over S "
                                 "as a whole (non-sequence) input")
        self.time: str | int = times.pop() if times else "T"
        self.steps = None
        if rec.steps is not None:
            if over:
                raise SpecError("E0409", "`steps` is for a block without a sequence input, but this one iterates over "
                                + ", ".join(f"`{o}`" for o in over), owner.loc("recurrent", "steps"),
                                hint="remove `steps:` (the sequence sets the length), or set `over: []`")
            self.steps = E.eval_size(rec.steps, owner.sizes, owner.loc("recurrent", "steps"), what="`steps`")
            self.time = self.steps
        elif not over:
            raise SpecError("E0409", "this recurrent block has no sequence to iterate over", owner.loc("recurrent"),
                            hint="give the module a [B, T, ...] input, or a fixed number of steps: `steps: L`")
        if self.steps is not None and rec.direction != "forward":
            raise SpecError("E0409", "a block without a sequence input runs forward only", owner.loc("recurrent", "direction"))
        captures = [k for k in decls if k not in over]
        body = Graph()
        states = list(rec.state)
        state_shapes: dict[str, Shape] = {}
        delays: dict[str, str] = {}
        for i, key in enumerate(states):
            owner.check_name(key, owner.key_loc("recurrent", "state", key), "state")
            shape = owner.resolve_shape(rec.state[key].shape, "recurrent", "state", key, "shape")
            if not shape or shape[0] != "B" or "T" in shape:
                raise SpecError("E0404", f"state `{key}` must have a batch axis first and no time axis",
                                owner.loc("recurrent", "state", key), expected="[B, ...]", found=fmt(shape))
            state_shapes[key] = shape
            node = Node(body.fresh(owner.prefix + key + "_prev"), "state", attrs={"index": i, "shape": shape},
                        shape=shape, loc=owner.key_loc("recurrent", "state", key))
            delays[key] = body.add(node).name
        env = Env(owner, body, delays)
        for i, key in enumerate(over):
            shape = (self.graph[self.inputs[key]].shape[0], *self.graph[self.inputs[key]].shape[2:])
            node = body.add(Node(body.fresh(owner.prefix + key), "step_input", attrs={"index": i, "shape": shape},
                                 shape=shape, dtype=self.graph[self.inputs[key]].dtype, loc=owner.key_loc("inputs", key)))
            env.values[key] = Value(node.name)
        for i, key in enumerate(captures):
            outer = self.graph[self.inputs[key]]
            node = body.add(Node(body.fresh(owner.prefix + key), "capture",
                                 attrs={"index": i, "shape": outer.shape, "dtype": outer.dtype},
                                 shape=outer.shape, dtype=outer.dtype, loc=owner.key_loc("inputs", key)))
            env.values[key] = Value(node.name)
        equations: dict[str, tuple[str, Path]] = {}
        for section in ("encoder", "step", "decoder"):
            for key, text in getattr(rec, section).items():
                if key in equations:
                    raise SpecError("E0308", f"`{key}` is defined twice", owner.key_loc("recurrent", section, key))
                equations[key] = (text, ("recurrent", section, key))
        env.lower_equations(equations)
        self.equations = [normalize(n.strip()) for key in equations for n in key.split(",") if n.strip() != "_"]
        self.check_sections(env, equations, delays)
        updates = []
        for key in states:
            if key not in env.values or env.values[key].node is None:
                raise SpecError("E0405", f"state `{key}` has no update: no equation in `step` computes it",
                                owner.key_loc("recurrent", "state", key),
                                hint=f"add `{key}: <new value from x and {key}[t-1]>` under `step:`")
            update = body[env.values[key].node]  # type: ignore[index]
            if update.shape != state_shapes[key]:
                raise SpecError("E0403", f"the update of state `{key}` has the wrong shape", env.locs.get(key, update.loc),
                                expected=fmt(state_shapes[key]), found=fmt(update.shape),
                                notes=[(owner.loc("recurrent", "state", key), f"`{key}` is declared here")])
            if update.dtype != STATE_DTYPE:
                raise SpecError("E0403", f"the update of state `{key}` holds {update.dtype}, but states are "
                                f"{STATE_DTYPE}", env.locs.get(key, update.loc), expected=STATE_DTYPE,
                                found=update.dtype, hint="carry token ids as float logits (argmax them in the step), "
                                                         "or keep them as a step value rather than a state")
            updates.append(update.name)
        env_names = set(env.values) | set(states)
        inits = [self.initial_state(key, state_shapes[key], over, captures, env_names) for key in states]
        returns, out_names = self.returns(env)
        reverse = (owner.direction or rec.direction) == "reverse"
        sequences = [self.inputs[k] for k in over]
        if rec.lengths is not None:
            sequences = self.mask_padding(env, sequences, states, updates, inits, returns,
                                          [delays[k] for k in states], reverse)
        captures = self.drop_unread_captures(body, captures)
        stop = self.stop_condition(env)
        if stop is not None:  # outputs over time end when the block stops: their length is known only then
            returns = [(r, (s[0], "T_stop", *s[2:]) if r.kind == "all" else s) for r, s in returns]
        # outputs that name the same value (`y: h` and `y2: h`) share one return and one item
        distinct: list[tuple[LoopOutput, Shape]] = []
        slot: list[int] = []
        for ret, shape in returns:
            if ret not in [r for r, _ in distinct]:
                distinct.append((ret, shape))
            slot.append([r for r, _ in distinct].index(ret))
        loop = Loop(body, len(states), len(sequences), len(captures), states, updates,
                    [r for r, _ in distinct], reverse=reverse, steps=self.steps,
                    time=self.time if isinstance(self.time, str) else "T", stop=stop)
        loop_node = self.graph.add(Node(self.graph.fresh(owner.prefix + "loop"), "loop",
                                        inits + sequences + [self.inputs[k] for k in captures],
                                        {"loop": loop}, loc=owner.loc("recurrent")))
        items: dict[int, str] = {}
        outputs: dict[str, str] = {}
        for i, name in zip(slot, out_names):
            if i not in items:
                ret, shape = distinct[i]
                item = Node(self.graph.fresh(owner.prefix + name), "item", [loop_node.name],
                            {"index": i, "shape": shape}, shape, body[ret.node].dtype, owner.loc("outputs", name))
                items[i] = self.graph.add(item).name
            outputs[name] = items[i]
        return outputs

    def stop_condition(self, env: Env) -> tuple[str, int] | None:
        stop = self.rec.stop
        if stop is None:
            return None
        loc = self.owner.loc("recurrent", "stop")
        if self.steps is None:
            raise SpecError("E0409", "`stop` ends a block of `steps: L`; a block over a sequence ends with it", loc,
                            hint="add `steps: L` (the most steps to run) and drop the sequence input")
        value = env.values.get(normalize(stop.when))
        node = env.graph[value.node] if value is not None and value.node else None
        if node is None or node.shape != ("B",) or node.dtype != "int64":
            raise SpecError("E0403", "`stop.when` must name an int64 step value of shape [B], such as a token",
                            self.owner.loc("recurrent", "stop", "when"),
                            found=f"{node.dtype} {fmt(node.shape)}" if node else f"`{stop.when}` is no step value",
                            hint=did_you_mean(stop.when, env.values))
        if isinstance(stop.equals, int) and not isinstance(stop.equals, bool) and stop.equals >= 0:
            token = stop.equals
        else:
            token = E.eval_size(stop.equals, self.owner.sizes, self.owner.loc("recurrent", "stop", "equals"),
                                what="`stop.equals` (a token id)")
        return node.name, token

    def mask_padding(self, env: Env, sequences: list[str], states: list[str], updates: list[str], inits: list[str],
                     returns: list[tuple[LoopOutput, Shape]], previous: list[str], reverse: bool) -> list[str]:
        """``lengths: n``: each row gives what it alone, unpadded, would give, as PyTorch's packed sequences:

        - at a padded step (t >= n[b]) every state keeps its value and every per-step output is 0;
        - ``final(v)`` is v at the last step processed, position n-1 (reversed: 0);
        - ``last(v)`` is v at the last position of the row, n-1, in either direction.

        Any value that is not a state is *held* for `final`/`last`: one more state, updated where the row's mask
        (for reversed `last`: the mask of position n-1) is 1. The masks are more sequences read by the step;
        ``states``, ``updates``, ``inits`` and ``returns`` are extended or rewritten in place."""
        owner, key = self.owner, normalize(str(self.rec.lengths))
        loc = owner.loc("recurrent", "lengths")
        if key not in self.inputs:
            raise SpecError("E0301", f"`lengths` names `{key}`, which is not an input", loc,
                            hint=did_you_mean(str(key), self.inputs) or "declare it: `n: {shape: [B], dtype: int64}`")
        if not sequences:
            raise SpecError("E0409", "`lengths` needs a sequence to measure", loc)
        body, graph = env.graph, self.graph
        lengths = graph[self.inputs[key]]
        try:
            shape, dtype = infer("sequence_mask", [lengths.shape, graph[sequences[0]].shape], [lengths.dtype, "float32"], {})
        except ShapeError as err:
            raise SpecError("E0403", err.message, loc, expected=err.expected, found=err.found) from None
        masks: dict[str, dict[int, str]] = {}  # "valid" (t < n) or "at_last" (t == n-1) -> its body node by rank
        outer_masks: list[str] = []

        def mask_of_rank(which: str, rank: int) -> str:
            if which not in masks:
                attrs = {"only_last": True} if which == "at_last" else {}
                outer_masks.append(graph.add(Node(graph.fresh(owner.prefix + "mask"), "sequence_mask",
                                                  [lengths.name, sequences[0]], attrs, shape, dtype, loc)).name)
                index = len(sequences) + len(outer_masks) - 1
                masks[which] = {1: body.add(Node(body.fresh(owner.prefix + "mask"), "step_input", [],
                                                  {"index": index, "shape": ("B",)}, ("B",), "float32", loc)).name}
            by_rank = masks[which]
            while rank not in by_rank:
                r = max(by_rank)
                by_rank[r + 1] = body.add(Node(body.fresh(owner.prefix + "mask"), "unsqueeze", [by_rank[r]], {"axis": -1},
                                               ("B", *([1] * r)), "float32", loc)).name
            return by_rank[rank]

        mask_of_rank("valid", 1)  # the first mask is the sequence right after the spec's own
        masked: dict[str, str] = {}
        for i, (new, old) in enumerate(zip(updates, previous)):
            node = body[new]
            masked[new] = body.add(Node(body.fresh(new + "_kept"), "select",
                                        [mask_of_rank("valid", len(node.shape)), new, old],
                                        {}, node.shape, node.dtype, node.loc)).name
            updates[i] = masked[new]
        held: dict[tuple[str, str], str] = {}

        def hold(value: str, which: str) -> str:
            """A new state that takes ``value`` where mask ``which`` is 1 and keeps its own value elsewhere."""
            if (value, which) not in held:
                v = body[value]
                name = owner.prefix + value.removeprefix(owner.prefix) + ("_at_last" if which == "at_last" else "_held")
                prev = body.add(Node(body.fresh(name + "_prev"), "state", [], {"index": len(states), "shape": v.shape},
                                     v.shape, v.dtype, v.loc))
                new = body.add(Node(body.fresh(name), "select", [mask_of_rank(which, len(v.shape)), value, prev.name],
                                    {}, v.shape, v.dtype, v.loc))
                zeros = {"shape": v.shape[1:], **({"dtype": v.dtype} if v.dtype != "float32" else {})}
                inits.append(graph.add(Node(graph.fresh(name + "_init"), "zeros", [sequences[0]], zeros, v.shape,
                                            v.dtype, loc)).name)
                states.append(new.name.removeprefix(owner.prefix))  # a body node's name: no state has it yet
                updates.append(new.name)
                held[value, which] = new.name
            return held[value, which]

        zero = env.const(0.0, loc)
        for i, (ret, shape) in enumerate(returns):
            n = body[ret.node]
            if ret.kind == "all":
                pad = zero
                if n.dtype != "float32":  # a zero of the value's own type (ids, say): ONNX's Where wants one type
                    pad = body.add(Node(body.fresh(ret.node + "_zero"), "zeros", [ret.node],
                                        {"shape": n.shape[1:], "dtype": n.dtype}, n.shape, n.dtype, n.loc)).name
                node = body.add(Node(body.fresh(ret.node + "_or_0"), "select",
                                     [mask_of_rank("valid", len(n.shape)), masked.get(ret.node, ret.node), pad],
                                     {}, n.shape, n.dtype, n.loc)).name
                returns[i] = (LoopOutput(node, "all"), shape)
            elif not n.shape or n.shape[0] != "B":
                continue  # no batch axis: the same at every step
            elif ret.kind == "final" or not reverse:  # forward, the last step processed is at position n-1
                returns[i] = (LoopOutput(masked.get(ret.node) or hold(ret.node, "valid"), "final"), shape)
            else:  # reversed `last`: position n-1 is the first real step processed
                returns[i] = (LoopOutput(hold(ret.node, "at_last"), "final"), shape)
        return [*sequences, *outer_masks]

    @staticmethod
    def drop_unread_captures(body: Graph, captures: list[str]) -> list[str]:
        """Inputs that no step reads (an initial state, say) are not passed into the loop."""
        read = {i for n in body for i in n.inputs}
        kept: list[str] = []
        for node in sorted((n for n in body if n.op == "capture"), key=lambda n: n.attrs["index"]):
            key = captures[node.attrs["index"]]
            if node.name in read:
                node.attrs["index"] = len(kept)
                kept.append(key)
            else:
                del body.nodes[node.name]
        return kept

    def check_sections(self, env: Env, equations: dict[str, tuple[str, Path]], delays: dict[str, str]) -> None:
        """The encoder reads only the input at step t: it may not use a state (that is G's job)."""
        state_nodes = set(delays.values())
        for key, (_, path) in equations.items():
            if path[1] != "encoder":
                continue
            seen, stack = set(), [env.values[key].node]
            while stack:
                n = stack.pop()
                if n in state_nodes:
                    raise SpecError("E0406", f"encoder equation `{key}` reads a state", self.owner.loc(*path),
                                    hint="Enc(x(t)) sees the input only; move this equation to `step:`")
                if n not in seen:
                    seen.add(n)
                    stack += env.graph[n].inputs  # type: ignore[index]

    def learned_name(self, key: str, values: set[str]) -> str:
        """The name of state ``key``'s learned initial value (`seqdsl.naming.learned_state`), which no other name
        of the module may take: it is a parameter, an attribute of the module and an ONNX initializer."""
        name = learned_state(key)
        mod = self.owner.mod
        taken = ("a parameter" if name in self.owner.param_names else "an input" if name in mod.inputs
                 else "a size" if name in mod.sizes else "an output" if name in mod.outputs
                 else "a state or step value" if name in values else None)
        if taken:
            raise SpecError("E0308", f"`{name}` is the learned initial state of `{key}`, but it is also {taken}",
                            self.owner.loc("recurrent", "state", key, "init"),
                            expected=f"`init: learned` makes the parameter `{name}`; no other name of this module "
                                     "may be the same", hint=f"rename the other `{name}`")
        self.owner.check_attribute(name, self.owner.loc("recurrent", "state", key, "init"), "learned initial state")
        return name

    def initial_state(self, key: str, shape: Shape, over: list[str], captures: list[str], values: set[str]) -> str:
        owner, env_names = self.owner, values
        init = normalize(self.rec.state[key].init)
        loc = owner.loc("recurrent", "state", key)
        ref = self.inputs[(over or captures)[0]] if (over or captures) else None
        if init == "zeros" or init == "learned":
            if ref is None:
                raise SpecError("E0407", f"state `{key}` needs a batch size, but the module has no input to read it from",
                                loc, hint="give the module an input, or initialise the state from one")
            if init == "zeros":
                name = self.graph.fresh(owner.prefix + key + "_init")
                return self.graph.add(Node(name, "zeros", [ref], {"shape": shape[1:]}, shape, loc=loc)).name
            if len(shape) < 2:  # the parameter would be a scalar, which parameters never are (see ParamDecl)
                raise SpecError("E0404", f"a learned initial state needs an axis besides B, but `{key}` is {fmt(shape)}",
                                loc, expected="[B, n]", found=fmt(shape), hint=f"declare `{key}` as [B, 1]")
            pname = owner.prefix + self.learned_name(key, env_names)
            owner.params[pname] = Param(pname, tuple(shape[1:]), "zeros", loc)  # type: ignore[arg-type]
            pnode = self.graph.add(Node(self.graph.fresh(pname), "param", attrs={"name": pname, "shape": shape[1:]},
                                        shape=shape[1:], loc=loc))
            name = self.graph.fresh(owner.prefix + key + "_init")
            return self.graph.add(Node(name, "expand_batch", [pnode.name, ref], {}, shape, loc=loc)).name
        if init not in self.inputs:
            raise SpecError("E0301", f"initial value `{init}` of state `{key}` is not an input", loc,
                            expected="zeros, learned, or an input name", hint=did_you_mean(init, self.inputs))
        node = self.graph[self.inputs[init]]
        if node.shape != shape or node.dtype != STATE_DTYPE:
            raise SpecError("E0403", f"input `{init}` cannot initialise state `{key}`", loc,
                            expected=f"{STATE_DTYPE} {fmt(shape)}", found=f"{node.dtype} {fmt(node.shape)}",
                            notes=[(node.loc, f"`{init}` is declared here")],
                            hint=f"states are {STATE_DTYPE}: declare `{init}` with the state's shape and no int64 dtype"
                            if node.dtype != STATE_DTYPE else None)
        return node.name

    def returns(self, env: Env) -> tuple[list[tuple[LoopOutput, Shape]], list[str]]:
        out: list[tuple[LoopOutput, Shape]] = []
        names = []
        for name, text in self.owner.mod.outputs.items():
            loc = self.owner.loc("outputs", name)
            offset = self.owner.doc.value_col_offset(self.owner.unit.path + ("outputs", name))
            expr = E.parse_equation(text, loc.shifted(max(offset, 0)))
            kind = "all"
            if isinstance(expr, E.Call) and expr.func in OUTPUT_SELECTORS and len(expr.args) == 1:
                kind, expr = expr.func, expr.args[0]
            if not isinstance(expr, E.Name) or expr.id not in self.equations or env.values[expr.id].node is None:
                raise SpecError("E0408", "a recurrent module's output names a step value", loc,
                                expected="an equation of the block (encoder, step or decoder): `h` (every step, "
                                         "[B, T, ...]), `final(h)` (after the last step) or `last(h)` (at position T-1)",
                                found=repr(text),
                                hint=did_you_mean(expr.id, self.equations) if isinstance(expr, E.Name) else None)
            node = env.values[expr.id].node
            assert node is not None
            check_output(env.graph[node], name, loc)
            shape = env.graph[node].shape
            if kind == "all":
                shape = (shape[0], self.time, *shape[1:])
            out.append((LoopOutput(node, kind), shape))  # type: ignore[arg-type]
            names.append(name)
        return out, names
