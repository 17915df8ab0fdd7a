"""Training glue: device choice, batches on a device, a resumable loop whose modules follow the device."""

from __future__ import annotations

import numpy as np
import torch

from anomaly.training import TrainConfig, TrainLoop, batches, device_label, resolve_device


def test_resolve_device_and_label():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("") == resolve_device("auto")
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda") == "cuda"
    assert "CPU" in device_label("cpu") and torch.__version__ in device_label("cpu")


def test_batches_shape_dtype_device_and_augmentation_bounds():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(0, 1.5, (10, 8, 8)).astype(np.float32)
    masks = imgs > 0.5
    x, m = next(batches(imgs, masks, 4, np.random.default_rng(1), augment=True, device="cpu"))
    assert x.shape == (4, 1, 8, 8) and m.shape == (4, 1, 8, 8)
    assert x.dtype == torch.float32 and m.dtype == torch.bool and x.device.type == "cpu"
    assert float(x.min()) >= 0 and float(x.max()) <= 1.5
    x2, _ = next(batches(imgs, masks, 4, np.random.default_rng(1), augment=True, device="cpu"))
    assert torch.equal(x, x2)  # same seed, same batch


def test_train_loop_moves_modules_saves_and_resumes(tmp_path):
    cfg = TrainConfig(seed=0, max_steps=3, minutes=5, device="cpu")
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loop = TrainLoop(cfg, tmp_path, {"net": net}, {"opt": opt})
    for _ in loop:
        loss = net(torch.ones(2, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loop.log(loss=loss.item())
    assert loop.step == 3 and (tmp_path / "state.safetensors").exists()
    net2 = torch.nn.Linear(4, 1)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2)
    cfg2 = TrainConfig(seed=0, max_steps=5, minutes=5, device="cpu", resume=True)
    loop2 = TrainLoop(cfg2, tmp_path, {"net": net2}, {"opt": opt2})
    assert loop2.step == 3
    assert torch.equal(net2.weight, net.weight) and next(net2.parameters()).device.type == "cpu"
    assert opt2.state_dict()["state"][0]["exp_avg"].shape == (1, 4)
    assert sum(1 for _ in loop2) == 2


def test_a_named_split_that_does_not_exist_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    """--train-split / --val-split typos are refused instead of silently falling back to a 10% split."""
    import pytest

    from anomaly.errors import DatasetError
    from anomaly.train import load_training_data, main

    with pytest.raises(DatasetError, match="val_nromal"):
        load_training_data(tiny_dataset, "train", "val_nromal")
    with pytest.raises(DatasetError, match="trian"):
        load_training_data(tiny_dataset, "trian")
    assert main(["zscore", "--data", str(tiny_dataset), "--out", str(tmp_path / "z"), "--val-split", "val_nromal"]) == 2
    assert "no split folder 'val_nromal'" in capsys.readouterr().err
    assert not (tmp_path / "z" / "card.json").exists()
    # the defaults still fall back: a folder with train/ only holds out 10% of it for validation
    only = tmp_path / "only_train"
    only.mkdir()
    (only / "train").symlink_to(tiny_dataset / "train", target_is_directory=True)
    train, val, _ = load_training_data(only, "train", "val_normal")
    full, _, _ = load_training_data(tiny_dataset)
    assert len(val) == len(full) // 10 and len(train) + len(val) == len(full)
