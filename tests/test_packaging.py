"""The install puts nothing at the top of site-packages but `seqdsl`: compilers/ and cli.py install as
seqdsl.compilers and seqdsl.cli, and a checkout finds them under the same names. A pickled module loads in a later
process after its cache is gone, and a carried source that is not the one its name says is never run.

This file names modules by their installed names only (tools/rename_imports.py leaves it as it is), so that it
holds before and after the repository's imports are renamed."""

from __future__ import annotations

import functools
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, SPECS

sys.path.insert(0, str(ROOT / "tools"))
import rename_imports  # noqa: E402

sys.path.pop(0)


def _python(code: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_a_checkout_finds_compilers_and_cli_under_the_seqdsl_name(tmp_path: Path):
    r = _python("""
        import seqdsl, seqdsl.compilers.build, seqdsl.cli
        print(seqdsl.compilers.build.__file__); print(seqdsl.cli.__file__)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(ROOT / "compilers" / "build.py"), str(ROOT / "cli.py")]
    r = subprocess.run([sys.executable, "-m", "seqdsl", "validate", str(SPECS / "lstm.yaml")], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr


def test_every_package_folder_is_installed_under_seqdsl():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = config["tool"]["setuptools"]
    installed = {"seqdsl": "seqdsl", **tool["package-dir"]}
    folders = {str(p.parent.relative_to(ROOT)) for top in ("seqdsl", "compilers")
               for p in (ROOT / top).rglob("__init__.py")}

    def folder(package: str) -> str:
        head = max((k for k in installed if package == k or package.startswith(k + ".")), key=len)
        return str(Path(installed[head], *package[len(head):].split(".")[1:]))

    data = set(tool["package-data"])  # folders of files, not modules: the shipped specs
    assert sorted(folder(p) for p in tool["packages"] if p not in data) == sorted(folders)
    assert {folder(p) for p in data} == {"specs"}
    assert all(p == "seqdsl" or p.startswith("seqdsl.") for p in tool["packages"])
    assert config["project"]["scripts"] == {"seqdsl": "seqdsl.cli:app"}


def test_the_wheel_has_no_top_level_but_seqdsl(tmp_path: Path):
    """The wheel a regular ``pip install .`` installs, built from a copy (setuptools writes build/ beside it)."""
    source = tmp_path / "src"
    for name in ("seqdsl", "compilers", "specs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("cli.py", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(source)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("seqdsl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"seqdsl", wheel.name.split("-py")[0] + ".dist-info"}
    for module in ("seqdsl/cli.py", "seqdsl/compilers/build.py", "seqdsl/compilers/generated/__init__.py",
                   "seqdsl/compilers/training/run.py", "seqdsl/passes/__init__.py",
                   "seqdsl/specs/lstm.yaml", "seqdsl/specs/lib/gates.yaml", "seqdsl/specs/seqdsl.schema.json"):
        assert module in names  # the specs: the `std:` library of imports
    # installed (no checkout in sight), a spec in a folder of its own imports the std library from the package
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    user = tmp_path / "user"
    user.mkdir()
    (user / "m.yaml").write_text("imports:\n  LSTM: std:lstm.yaml\ninputs:\n  x: [B, T, 3]\n"
                                 "graph:\n  r: LSTM(x, h=4)\noutputs:\n  y: r.y\n")
    r = _python("""
        import seqdsl
        assert seqdsl.__file__.startswith(%r), seqdsl.__file__
        print(seqdsl.load("m.yaml").name)
    """ % str(site), env={"PYTHONPATH": str(site)}, cwd=user)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------- torch.save after $TMPDIR

LOAD = """
    import numpy as np, torch
    torch.set_num_threads({threads})  # as the saving process ran: another count may round differently
    for spec in ("lstm.yaml", "lstm_peephole.yaml"):
        net = torch.load(f"{out}/{{spec}}.pt", weights_only=False)
        got = net(torch.from_numpy(np.load(f"{out}/{{spec}}.x.npy")))[0].detach().numpy()
        np.testing.assert_allclose(got, np.load(f"{out}/{{spec}}.want.npy"), rtol=1e-6, atol=1e-7, err_msg=spec)
        print(type(net).__module__)
"""


def test_a_saved_module_loads_after_its_cache_is_cleaned(tmp_path: Path):
    """Saved here; loaded in a process whose $TMPDIR is new and empty, as after a reboot or a tmp cleaner."""
    import numpy as np
    import torch

    import seqdsl
    from seqdsl.compilers.build import example_inputs
    from seqdsl.compilers.torch_module import to_module

    names = []
    for spec in ("lstm.yaml", "lstm_peephole.yaml"):  # a recognised cell and a generic loop
        model = seqdsl.load(SPECS / spec)
        net = to_module(model)
        x = torch.from_numpy(next(iter(example_inputs(model, 2, 5, 0).values())))
        torch.save(net, tmp_path / f"{spec}.pt")
        np.save(tmp_path / f"{spec}.x.npy", x.numpy())
        np.save(tmp_path / f"{spec}.want.npy", net(x)[0].detach().numpy())
        names.append(type(net).__module__)
    (tmp_path / "tmp").mkdir()
    r = _python(LOAD.format(out=str(tmp_path), threads=torch.get_num_threads()),
                env={"TMPDIR": str(tmp_path / "tmp")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == names


@functools.cache
def _pickled_lstm() -> tuple[bytes, str, str]:
    import seqdsl
    from seqdsl.compilers.torch_module import to_module

    net = to_module(seqdsl.load(SPECS / "lstm.yaml"))
    leaf = type(net).__module__.rpartition(".")[2]
    return pickle.dumps(net), leaf, sys.modules[type(net).__module__].__loader__.source  # type: ignore[union-attr]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_carried_source_changed_anywhere_is_refused_unrun(data):
    from seqdsl.compilers import generated

    blob, leaf, source = _pickled_lstm()
    encoded = source.encode()
    at = blob.index(encoded)
    offset = data.draw(st.sampled_from([i for i, b in enumerate(encoded) if b < 128]), label="offset")
    char = data.draw(st.sampled_from(b"x0 ()=\n#").filter(lambda c: c != encoded[offset]), label="byte")
    changed = blob[:at + offset] + bytes([char]) + blob[at + offset + 1:]
    forged = changed[at:at + len(encoded)].decode()
    forged_leaf = generated.module_name("lstm", forged).rpartition(".")[2]
    with pytest.raises(pickle.UnpicklingError, match="does not have the SHA-256 its name says"):
        pickle.loads(changed)
    assert f"{generated.__name__}.{forged_leaf}" not in sys.modules
    assert not (generated.cache_dir() / f"{forged_leaf}.py").exists()


@pytest.mark.parametrize("leaf", ["../../etc/x", "lstm", "lstm_" + "g" * 32, "a" * 41 + "_" + "0" * 32, 3,
                                  "x\nfake.yaml:1:1: error\x1b[2J"])
def test_a_carried_name_that_is_no_module_name_is_refused(leaf):
    from seqdsl.compilers import generated

    with pytest.raises(pickle.UnpicklingError) as err:
        generated.restore(leaf, "X = 1\n")
    assert str(err.value).isprintable()  # one line, no control characters from the file


def test_a_module_neither_cached_nor_carried_is_one_line_saying_what_to_do():
    from seqdsl.compilers import generated

    name = f"{generated.__name__}.lstm_{'0' * generated.DIGEST_CHARS}"
    with pytest.raises(ModuleNotFoundError) as err:
        __import__(name)
    message = str(err.value)
    assert "\n" not in message and "state_dict" in message and "cache" in message


# ------------------------------------------------------------------------------------------- the rename script

RENAMES = [
    ("from compilers.build import build\n", "from seqdsl.compilers.build import build\n"),
    ("from compilers import generated\n", "from seqdsl.compilers import generated\n"),
    ("import cli\n", "from seqdsl import cli\n"),
    ("import cli as c\n", "from seqdsl import cli as c\n"),
    ("from cli import app\n", "from seqdsl.cli import app\n"),
    ("def f():\n    import compilers.build\n    return compilers.build.X\n",
     "def f():\n    import seqdsl.compilers.build\n    return seqdsl.compilers.build.X\n"),
    ("import compilers.build as b, os\n", "import seqdsl.compilers.build as b, os\n"),
    ("m.setattr('compilers.build.run', f)  # see compilers.publish\n",
     "m.setattr('seqdsl.compilers.build.run', f)  # see seqdsl.compilers.publish\n"),
    ('x = f"compilers.generated.{name}"\n', 'x = f"seqdsl.compilers.generated.{name}"\n'),
    ('code = "import sys, compilers.onnx_runtime"\n', 'code = "import sys, seqdsl.compilers.onnx_runtime"\n'),
    ('args = ["-m", "compilers.x"]; p = ROOT / "cli.py"; q = "compilers/build.py"\n',
     'args = ["-m", "seqdsl.compilers.x"]; p = ROOT / "cli.py"; q = "compilers/build.py"\n'),
    ('s = "python -m cli build"\n', 's = "python -m seqdsl build"\n'),
    ("from seqdsl.compilers.build import build\nimport seqdsl.cli\n",
     "from seqdsl.compilers.build import build\nimport seqdsl.cli\n"),
]


@pytest.mark.parametrize("old, new", RENAMES)
def test_the_rename_script_rewrites_imports_once(old: str, new: str):
    assert rename_imports.rewrite_python(old) == new
    assert rename_imports.rewrite_python(new) == new  # idempotent


def test_the_rename_script_rewrites_markdown_module_paths_only():
    old = "Use `compilers.onnx_runtime.run` (see compilers/ and cli.py):\n```python\nfrom compilers.build import x\n```\n"
    new = rename_imports.rewrite_text(old)
    assert new == ("Use `seqdsl.compilers.onnx_runtime.run` (see compilers/ and cli.py):\n```python\n"
                   "from seqdsl.compilers.build import x\n```\n")
    assert rename_imports.rewrite_text(new) == new
