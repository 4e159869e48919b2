"""`SpecModule` in a user's own `lightning.Trainer`: it trains any spec on dict batches, its loss is torch.nn's, and
its weights build; `build --weights` reads a Lightning checkpoint's weights without unpickling anything else."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from conftest import SPECS

from seqdsl.compilers.build import build
from seqdsl.compilers.weights import checkpoint_weights, read_weights
from seqdsl import tasks
from seqdsl.errors import SpecError
import seqdsl


def _batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    arrays = tasks.adding(n, 5, seed=seed)
    return [{k: torch.from_numpy(v[i:i + 16]) for k, v in arrays.items()} for i in range(0, n, 16)]


def test_a_user_trainer_fits_the_module_and_its_weights_build(tmp_path: Path):
    import lightning as L  # here, not at collection: the suite's process stays small for tests that measure it

    from seqdsl.compilers.training import SpecModule

    module = SpecModule.for_spec(SPECS / "adding_lstm.yaml", {"h": 4}, loss="mse", lr=0.02, seed=1)
    batch = _batches(16, 0)[0]
    with torch.no_grad():  # the loss is torch.nn's MSE of the output `y` against the targets
        expected = F.mse_loss(module.net(batch["x"]), batch["target"])
        sums = module.objective.sums(module(batch), batch)
    assert float(sums.loss / sums.count) == pytest.approx(float(expected), rel=1e-6)
    train, val = _batches(128, 0), _batches(64, 1)
    trainer = L.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, check_val_every_n_epoch=2,
                        num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(train, batch_size=None), DataLoader(val, batch_size=None))
    assert trainer.global_step == 40 and "val_loss" in trainer.callback_metrics
    path = tmp_path / "user.ckpt"
    trainer.save_checkpoint(path)
    result = build(SPECS / "adding_lstm.yaml", tmp_path / "out", {"h": 4}, weights=path)
    assert max(result.max_abs_diff.values()) < 1e-4
    from safetensors.torch import load_file

    shipped = load_file(str(tmp_path / "out" / "weights.safetensors"))
    assert all(torch.equal(shipped[k], v) for k, v in module.net.state_dict().items())


class _Planted:
    def __reduce__(self):  # unpickling this would run `open(...).write(...)`
        return (exec, ("open(%r, 'w').write('pwned')" % str(Path(__file__).parent / ".planted"),))


def test_a_checkpoint_that_is_not_plain_tensors_is_one_error_and_never_runs(tmp_path: Path):
    model = seqdsl.load(SPECS / "adding_lstm.yaml", {"h": 4})
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {"W_y": _Planted()}}, hostile)
    marker = Path(__file__).parent / ".planted"
    for path, words in [(hostile, "not a readable checkpoint"), (tmp_path / "missing.ckpt", "no such")]:
        with pytest.raises(SpecError) as info:
            read_weights(model, path)
        assert info.value.code == "E0604" and words in info.value.message, info.value.message
    assert not marker.exists()
    (tmp_path / "junk.ckpt").write_bytes(b"not a zip")
    with pytest.raises(SpecError) as info:
        checkpoint_weights(tmp_path / "junk.ckpt")
    assert info.value.code == "E0604"
    torch.save({"state_dict": [1, 2]}, tmp_path / "list.ckpt")
    with pytest.raises(SpecError) as info:
        checkpoint_weights(tmp_path / "list.ckpt")
    assert "no state_dict of tensors" in info.value.message
