"""VAE and DAE (coarse noise): tiny trainings on the toy set, determinism, reload, lesion response."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomaly.methods.base import clear_cache, get_method, method_class

pytestmark = pytest.mark.timeout(300)

# (steps, batch size, lr) of the short trainings: enough steps for BatchNorm running statistics
# to settle (momentum 0.1 -> 0.9**30 ~ 4% of the initial stats left). Measured lesion / brain
# contrast of the post-processed map on the toy set: VAE ~2.5x at 30 steps; DAE 1.6x / 2.3x /
# 1.9x at 30 / 40 / 50 steps (the UNet copies more of its input). The tests ask for 1.3x.
SHORT = {"vae": (30, 8, 1e-3), "dae": (40, 8, 2e-3)}
MIN_CONTRAST = 1.3


def _train(name, data, out, steps, batch_size, lr=1e-3, seed=0):
    from anomaly.train import train
    from anomaly.training import TrainConfig

    return train(name, data, out, TrainConfig(seed=seed, max_steps=steps, batch_size=batch_size, lr=lr))


@pytest.fixture(scope="module")
def short_trained(tiny_dataset, tmp_path_factory):
    """Lazily trained checkpoints, one per method, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("vae_dae")
    done: dict = {}

    def get(name):
        if name not in done:
            steps, bs, lr = SHORT[name]
            _train(name, tiny_dataset, root / name, steps, bs, lr)
            done[name] = root / name
        return done[name]

    return get


@pytest.fixture(scope="module")
def val_lesion(tiny_dataset):
    from anomaly.data.prepared import load_prepared

    return load_prepared(tiny_dataset / "val_lesion")


def test_coarse_noise_is_masked_smooth_and_seeded():
    from anomaly.methods.dae.noise import coarse_noise

    masks = torch.zeros(6, 1, 128, 128, dtype=torch.bool)
    masks[:, :, 16:112, 24:104] = True
    n = coarse_noise(masks, res=16, std=0.2, generator=torch.Generator().manual_seed(0))
    assert n.shape == masks.shape and n.dtype == torch.float32
    assert n[~masks].abs().max() == 0  # nothing outside the brain
    inside = n[:, 0, 16:112, 24:104]
    assert 0.05 < float(inside.std()) < 0.2  # std of the low-res draws, lowered by interpolation
    # low-frequency: neighbouring pixels are strongly correlated, along both axes
    for a, b in [(inside[:, :, :-1], inside[:, :, 1:]), (inside[:, :-1], inside[:, 1:])]:
        assert np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1] > 0.9
    # and its spectrum is concentrated below the noise grid's frequency (16 cycles / 128 px)
    full = coarse_noise(torch.ones(8, 128, 128, dtype=torch.bool), 16, 0.2, torch.Generator().manual_seed(1))
    power = np.abs(np.fft.fft2(full.numpy())) ** 2
    f = np.abs(np.fft.fftfreq(128))
    low = (f[:, None] <= 16 / 128) & (f[None, :] <= 16 / 128)
    assert power[:, low].sum() / power.sum() > 0.95
    # 3-D masks work too, reproducible for a seed, different across seeds
    m3 = masks[:, 0]
    a = coarse_noise(m3, 8, 0.1, torch.Generator().manual_seed(5))
    assert a.shape == m3.shape
    assert torch.equal(a, coarse_noise(m3, 8, 0.1, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, coarse_noise(m3, 8, 0.1, torch.Generator().manual_seed(6)))


def test_dae_noise_settings_are_hyper_parameters(monkeypatch):
    from anomaly.methods.dae.method import DEFAULT_HPARAMS, hparams

    monkeypatch.delenv("ANOMALY_DAE_NOISE_RES", raising=False)
    monkeypatch.delenv("ANOMALY_DAE_NOISE_STD", raising=False)
    assert hparams() == DEFAULT_HPARAMS
    monkeypatch.setenv("ANOMALY_DAE_NOISE_RES", "8")
    monkeypatch.setenv("ANOMALY_DAE_NOISE_STD", "0.1")
    assert hparams()["noise_res"] == 8 and hparams()["noise_std"] == 0.1


@pytest.mark.parametrize("name", ["vae", "dae"])
def test_outputs_card_and_reload(name, short_trained, val_lesion):
    ckpt = short_trained(name)
    card = json.loads((ckpt / "card.json").read_text())
    for key in ("architecture", "hyper_parameters", "train_steps", "wall_time_s", "calibration", "validation", "checkpoint_hash"):
        assert key in card, key
    assert card["train_steps"] == SHORT[name][0]
    assert (ckpt / "model.safetensors").stat().st_size < 15e6
    assert method_class(name).citation and method_class(name).paper

    imgs, masks = val_lesion.images[:5], val_lesion.masks[:5]
    clear_cache()
    m = get_method(name, ckpt)
    out = m.predict(imgs, masks, seed=0)
    assert out.residual.shape == imgs.shape and out.pseudo_healthy.shape == imgs.shape
    assert out.residual.dtype == np.float32 and (out.residual >= 0).all() and np.isfinite(out.residual).all()
    assert (out.pseudo_healthy[~masks] == 0).all()
    # deterministic at test time (the VAE decodes the posterior mean, no sampling)
    assert np.array_equal(out.residual, m.predict(imgs, masks, seed=7).residual)
    clear_cache()
    again = get_method(name, ckpt).predict(imgs, masks, seed=0)
    assert np.array_equal(out.residual, again.residual) and np.array_equal(out.pseudo_healthy, again.pseudo_healthy)
    # batch composition does not change a slice's output (eval-mode normalisation)
    np.testing.assert_allclose(get_method(name, ckpt).predict(imgs[:1], masks[:1]).residual[0], out.residual[0], atol=1e-5)


@pytest.mark.parametrize("name", ["vae", "dae"])
def test_same_seed_same_checkpoint(name, tiny_dataset, tmp_path):
    c1 = _train(name, tiny_dataset, tmp_path / "a", 2, 4, seed=3)
    c2 = _train(name, tiny_dataset, tmp_path / "b", 2, 4, seed=3)
    assert c1["checkpoint_hash"] == c2["checkpoint_hash"]
    c3 = _train(name, tiny_dataset, tmp_path / "c", 2, 4, seed=4)
    assert c3["checkpoint_hash"] != c1["checkpoint_hash"]


@pytest.mark.parametrize("name", ["vae", "dae"])
def test_residual_higher_inside_lesion(name, short_trained, val_lesion):
    from anomaly.train import _as_prepared
    from anomaly.scoring import run_method

    clear_cache()
    res = run_method(get_method(name, short_trained(name)), _as_prepared(val_lesion))
    brain = val_lesion.masks
    lesion = val_lesion.lesions & brain
    assert lesion.sum() > 100
    inside, brain_mean = res.anomaly_map[lesion].mean(), res.anomaly_map[brain].mean()
    assert inside > MIN_CONTRAST * brain_mean, (inside, brain_mean)


def test_dae_tune_helper_runs_on_val_lesion(tiny_dataset, tmp_path):
    from anomaly.methods.dae.tune import tune
    from anomaly.training import TrainConfig

    rows = tune(tiny_dataset, tmp_path, [(16, 0.2), (8, 0.1)], TrainConfig(seed=0, max_steps=1, batch_size=4))
    assert {(r["noise_res"], r["noise_std"]) for r in rows} == {(16, 0.2), (8, 0.1)}
    assert all(r["val_lesion_pixel_ap"] is not None for r in rows)
    assert (tmp_path / "summary.json").exists()
    card = json.loads((tmp_path / "r8_s0.1" / "card.json").read_text())
    assert card["noise_res"] == 8 and card["noise_std"] == 0.1
