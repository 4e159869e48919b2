"""The naming policy: how spec text may reach generated files, and which names the compiler keeps for itself.

Spec names are identifiers, NFKC-normalised when loaded (as Python itself reads identifiers, so ``ﬁ`` *is*
``fi``); two spec names that normalise alike are one name, and defining it twice is an error. Everything else a
spec carries (file names, import paths, free text) reaches generated *source* (model.py) only through `escape`,
which keeps its exact value; what a build writes as *data* (ONNX doc strings and metadata, build.json) takes it
through `seqdsl.text.plain_text`, which keeps it readable.

What the compiler invents never takes a spec name:
  * model.py: every scope has one allocator (``seqdsl.compilers.torch_codegen._Names``) that knows the spec's names,
    `PYTHON_RESERVED` and the module-level names of model.py; compiler temporaries (``h_prev``, ``x_t``,
    ``h_steps``) take what is left, so a value named like one of them is simply given another spelling;
  * attributes of ``Model`` (parameters, the submodules of calls) are spec names, so they may not be one of
    `MODULE_ATTRIBUTES` (nn.Module's and Model's own), and the learned initial state of ``h`` is the parameter
    `learned_state` (``h_0``), which no other name of its module may take;
  * ONNX: every value name the compiler makes contains ``#`` or ``/``, which no spec name does; the model's
    inputs, outputs and parameters keep their spec names, so they must differ from each other.

This module imports neither torch nor onnx: `MODULE_ATTRIBUTES` is written out, and a test checks it against the
installed torch.
"""

from __future__ import annotations

import builtins
import keyword
import unicodedata

#: Names Python itself gives meaning to in any scope of model.py.
PYTHON_RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))

#: Public attributes of torch.nn.Module (torch 2.x), and those generated ``Model`` classes add. A parameter or a
#: call (whose parameters become a submodule) named like one would replace it.
MODULE_ATTRIBUTES = frozenset("""
    T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double dump_patches
    eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule half ipu load_state_dict
    modules mtia named_buffers named_children named_modules named_parameters parameters register_backward_hook
    register_buffer register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook register_load_state_dict_pre_hook
    register_module register_parameter register_state_dict_post_hook register_state_dict_pre_hook requires_grad_
    set_extra_state set_submodule share_memory state_dict to to_empty train training type xpu zero_grad
    reset_parameters input_names output_names
""".split())


def normalize(name: str) -> str:
    """``name`` as Python reads an identifier (NFKC): ``ﬁ`` -> ``fi``, fullwidth ``ｈ`` -> ``h``."""
    return unicodedata.normalize("NFKC", name)


def learned_state(state: str) -> str:
    """The parameter holding the learned initial value of state ``state`` (``init: learned``): ``h`` -> ``h_0``."""
    return f"{state}_0"


_KEPT = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"\\", '"', "'"}


def escape(text: str) -> str:
    """``text`` as a fragment safe anywhere in generated source: in a comment, and inside any string literal
    (``"..."``, ``'...'``, ``\"\"\"...\"\"\"``) whose value it then is. The only escaping function for spec text.

    The result is printable ASCII without quotes; everything else (newlines, ``\\r``, NUL, U+2028, lone
    surrogates, non-ASCII letters, quotes, backslashes) is written as a Python escape (``\\n``, ``\\x22``,
    ``\\udc80``), so it can neither end a comment or a literal nor fail to encode.
    """
    out = []
    for ch in text:
        if ch in _KEPT:
            out.append(ch)
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def string_literal(text: str) -> str:
    """A double-quoted Python string literal whose value is ``text`` (built with `escape`)."""
    return f'"{escape(text)}"'
