"""DDAD and f-AnoGAN: tiny trainings on the toy set through ``anomaly.train.train``.

Output contract (shapes, extra maps, f-AnoGAN's own image score), determinism, save/load
round trip, --resume, DDAD's unlabeled folder (and its absence), DDAD's ASR stage (synthetic
anomalies, refined map as the residual) and DDAD localising the toy lesion after a short training.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from anomaly.data.prepared import load_prepared
from anomaly.methods.base import clear_cache, get_method
from anomaly.train import train
from anomaly.training import TrainConfig

pytestmark = pytest.mark.timeout(300)

DDAD_STEPS = 100  # the toy lesion shows in the inter-discrepancy from ~80-100 steps on
DDAD_LR = 3e-3
BATCH = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These nets are small (64x64, 16-64 channels): one torch thread is nearly as fast as two
    on an idle machine and avoids the OpenMP barrier stalls that make two threads several times
    slower when the cores are shared with other jobs."""
    import torch

    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANOMALY_THREADS", "1")
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ddad_data(tiny_dataset, tmp_path_factory):
    """A copy of the toy set with an ``unlabeled/`` mixture: a few images of its test split (every
    lesional one, two normal ones), images only (no labels, no masks)."""
    data = tmp_path_factory.mktemp("ddadds") / "ds"
    shutil.copytree(tiny_dataset, data)
    unl = data / "unlabeled" / "images"
    unl.mkdir(parents=True)
    rows = list(csv.DictReader((tiny_dataset / "test" / "labels.csv").open()))
    pick = [r["file"] for r in rows if r["label"] == "1"] + [r["file"] for r in rows if r["label"] == "0"][:2]
    for f in pick:
        shutil.copy2(tiny_dataset / "test" / "images" / f, unl / f)
    return data


@pytest.fixture(scope="module")
def trained(ddad_data, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("ddad_fanogan_ckpt")
    # the ASR refiner needs ~200 steps to localise the toy lesion (2x the ensembles' 100 here;
    # in real runs the wall-time split ASR_SHARE is what binds)
    monkeypatch_module.setattr("anomaly.methods.ddad.method.ASR_STEP_SHARE", 2.0)
    train("ddad", ddad_data, root / "ddad", TrainConfig(seed=0, max_steps=DDAD_STEPS, batch_size=BATCH, lr=DDAD_LR))
    train("fanogan", ddad_data, root / "fanogan", TrainConfig(seed=0, max_steps=6, batch_size=BATCH))
    clear_cache()
    return root


@pytest.fixture(scope="module")
def val_lesion(ddad_data):
    return load_prepared(ddad_data / "val_lesion")


def _card(path):
    return json.loads((path / "card.json").read_text())


def test_ddad_output_contract_and_card(trained, val_lesion):
    m = get_method("ddad", trained / "ddad")
    x, k = val_lesion.images[:5], val_lesion.masks[:5]
    out = m.predict(x, k, seed=0)
    n, s = x.shape[0], x.shape[-1]
    assert out.pseudo_healthy.shape == out.residual.shape == (n, s, s)
    assert out.image_score is None
    assert set(out.extra_maps) == {"intra_discrepancy", "inter_discrepancy", "reconstruction_residual"}
    for v in [out.residual, *out.extra_maps.values()]:
        assert v.shape == (n, s, s) and v.dtype == np.float32 and np.isfinite(v).all() and v.min() >= 0
    assert out.residual.max() <= 1 and not np.allclose(out.residual, out.extra_maps["inter_discrepancy"])  # ASR map
    card = _card(trained / "ddad")
    assert card["train_steps"] == DDAD_STEPS and card["wall_time_s"] > 0
    # the card's wall time is the whole training, ensembles and ASR head (each stage's beside it)
    assert card["wall_time_s"] == pytest.approx(card["ensembles_wall_time_s"] + card["asr_wall_time_s"])
    assert card["n_unlabeled_slices"] > 0 and card["unlabeled_data"].endswith("unlabeled")
    assert card["architecture"]["k"] == 3 and card["asr"]["steps"] == card["asr_steps"] >= 1
    assert card["config"]["data_dir"].endswith("ds")
    keys = set(m.net.state_dict())
    assert {p for p in ("ndm0.", "ndm2.", "udm0.", "udm2.") if any(q.startswith(p) for q in keys)} == {
        "ndm0.", "ndm2.", "udm0.", "udm2."}
    assert (trained / "ddad" / "model.safetensors").stat().st_size < 15e6
    assert "val_lesion_pixel_ap" in card["validation"] and "calibration" in card


def test_fanogan_output_contract_and_card(trained, val_lesion):
    m = get_method("fanogan", trained / "fanogan")
    x, k = val_lesion.images[:5], val_lesion.masks[:5]
    out = m.predict(x, k, seed=0)
    n, s = x.shape[0], x.shape[-1]
    assert out.pseudo_healthy.shape == out.residual.shape == (n, s, s)
    assert out.image_score.shape == (n,) and np.isfinite(out.image_score).all() and (out.image_score >= 0).all()
    assert out.residual.min() >= 0 and not out.pseudo_healthy[~k].any()  # pseudo-healthy masked to the brain
    card = _card(trained / "fanogan")
    assert card["gan_steps"] == 4 and card["encoder_steps"] == 2 and card["train_steps"] == 6
    assert card["hyper_parameters"]["n_critic"] == 5 and card["hyper_parameters"]["wgan_gp_lambda"] == 10
    assert {k.split(".")[0] for k in m.net.state_dict()} == {"G", "D", "E"}
    assert (trained / "fanogan" / "model.safetensors").stat().st_size < 15e6


@pytest.mark.parametrize("name", ["ddad", "fanogan"])
def test_save_load_round_trip(trained, val_lesion, name):
    x, k = val_lesion.images[:4], val_lesion.masks[:4]
    a = get_method(name, trained / name).predict(x, k, seed=0)
    clear_cache()
    b = get_method(name, trained / name).predict(x, k, seed=0)
    np.testing.assert_array_equal(a.residual, b.residual)
    np.testing.assert_array_equal(a.pseudo_healthy, b.pseudo_healthy)
    if name == "fanogan":
        np.testing.assert_array_equal(a.image_score, b.image_score)
    for key in a.extra_maps:
        np.testing.assert_array_equal(a.extra_maps[key], b.extra_maps[key])


@pytest.mark.parametrize("name", ["ddad", "fanogan"])
def test_same_seed_same_checkpoint_and_resume(ddad_data, tmp_path, name):
    cfg = dict(seed=0, max_steps=3, batch_size=4)
    h1 = train(name, ddad_data, tmp_path / "a", TrainConfig(**cfg))["checkpoint_hash"]
    h2 = train(name, ddad_data, tmp_path / "b", TrainConfig(**cfg))["checkpoint_hash"]
    assert h1 == h2
    # --resume on a finished run continues from work/ and changes nothing
    h3 = train(name, ddad_data, tmp_path / "a", TrainConfig(resume=True, **cfg))["checkpoint_hash"]
    assert h3 == h1
    clear_cache()


def test_ddad_without_unlabeled_trains_udm_on_train(tiny_dataset, tmp_path):
    card = train("ddad", tiny_dataset, tmp_path / "d", TrainConfig(seed=0, max_steps=1, batch_size=4))
    assert card["n_unlabeled_slices"] == 0 and card["unlabeled_data"] is None
    assert "train set alone" in card["udm_note"]
    clear_cache()


def test_ddad_residual_higher_inside_the_lesion(trained, val_lesion):
    m = get_method("ddad", trained / "ddad")
    idx = np.nonzero(val_lesion.labels == 1)[0]
    assert len(idx) >= 3
    out = m.predict(val_lesion.images[idx], val_lesion.masks[idx], seed=0)
    les = val_lesion.lesions[idx] & val_lesion.masks[idx]
    rest = val_lesion.masks[idx] & ~val_lesion.lesions[idx]
    inside, outside = out.residual[les].mean(), out.residual[rest].mean()
    assert inside > 1.5 * outside, (inside, outside)


def test_asr_synthetic_anomalies_stay_in_the_brain_and_match_their_targets(val_lesion):
    from anomaly.methods.ddad.asr import synthetic_anomalies

    x, m = val_lesion.images[:8], val_lesion.masks[:8]
    same, t0 = synthetic_anomalies(x, m, np.random.default_rng(0), p=0.0)
    np.testing.assert_array_equal(same, x)
    assert not t0.any()
    xc, t = synthetic_anomalies(x, m, np.random.default_rng(1), p=1.0)
    assert xc.shape == x.shape and xc.dtype == np.float32 and np.isfinite(xc).all()
    assert t.any(axis=(1, 2)).sum() >= 6  # nearly every slice got a blob
    assert not (t & ~m).any()  # targets inside the brain
    np.testing.assert_array_equal(xc[~m], x[~m])  # nothing changes outside the brain
    assert (np.abs(xc - x)[t] > 0.02).all()  # every target pixel changed
    # the same rng seed gives the same corruption
    xc2, t2 = synthetic_anomalies(x, m, np.random.default_rng(1), p=1.0)
    np.testing.assert_array_equal(xc, xc2)
    np.testing.assert_array_equal(t, t2)
    # subtle=1: every blob is a low-contrast shift (|delta| <= 0.12 each, two may overlap)
    xs, ts = synthetic_anomalies(x, m, np.random.default_rng(3), p=1.0, subtle=1.0)
    assert ts.any() and np.abs(xs - x).max() <= 0.24 + 1e-5 and (np.abs(xs - x)[ts] > 0.02).all()
    # edge=0 draws exactly what the default does; edge=1 puts the anomalies near the brain's edge
    # or on dark tissue (more of their pixels there than with uniform placement)
    xe0, te0 = synthetic_anomalies(x, m, np.random.default_rng(1), p=1.0, edge=0.0)
    np.testing.assert_array_equal(xe0, xc)
    np.testing.assert_array_equal(te0, t)
    from scipy.ndimage import binary_erosion

    hard = np.stack([(k & ~binary_erosion(k, iterations=8)) | (binary_erosion(k, iterations=3) & (im < 0.5))
                     for im, k in zip(x, m)])

    def share_near_hard(edge):
        inside = total = 0
        for seed in range(6):
            _, tt = synthetic_anomalies(x, m, np.random.default_rng(seed), p=1.0, edge=edge)
            inside, total = inside + (tt & hard).sum(), total + tt.sum()
        return inside / total

    assert share_near_hard(1.0) > share_near_hard(0.0) + 0.05


def test_ddad_asr_refined_map_is_the_residual(trained, val_lesion):
    m = get_method("ddad", trained / "ddad")
    card = _card(trained / "ddad")
    assert m.refiner is not None and card["score"]["map"] == "asr"
    assert card["asr_steps"] == 2 * DDAD_STEPS and "synthetic" in card["asr"]["what"]
    assert any(k.startswith("asr.") for k in __import__("safetensors.torch", fromlist=["x"]).load_file(
        str(trained / "ddad" / "model.safetensors")))
    out = m.predict(val_lesion.images[:3], val_lesion.masks[:3], seed=0)
    r = out.residual
    assert r.min() >= 0 and r.max() <= 1 and not r[~val_lesion.masks[:3]].any()
    # with the card's map set back to A_inter, the refined map is offered as an extra map instead
    m.score = {**m.score, "map": "inter"}
    try:
        out2 = m.predict(val_lesion.images[:3], val_lesion.masks[:3], seed=0)
    finally:
        m.score = {**m.score, "map": "asr"}
    np.testing.assert_array_equal(out2.extra_maps["asr_refined"], r)
    np.testing.assert_array_equal(out2.residual, out2.extra_maps["inter_discrepancy"])


def test_ddad_flip_tta_averages_both_orientations_and_is_flip_equivariant(trained, val_lesion):
    m = get_method("ddad", trained / "ddad")
    assert _card(trained / "ddad")["score"]["flip_tta"] is True and m.score["flip_tta"] is True
    x, k = val_lesion.images[:3], val_lesion.masks[:3]
    out = m.predict(x, k, seed=0)
    once = m._predict_once(x, k)
    back = m._predict_once(np.ascontiguousarray(x[..., ::-1]), np.ascontiguousarray(k[..., ::-1]))
    np.testing.assert_allclose(out.residual, 0.5 * (once.residual + back.residual[..., ::-1]), atol=1e-6)
    np.testing.assert_allclose(out.pseudo_healthy, 0.5 * (once.pseudo_healthy + back.pseudo_healthy[..., ::-1]), atol=1e-6)
    assert not np.allclose(out.residual, once.residual)  # the second orientation changes the map
    # averaged over both orientations, the map of a mirrored slice is the mirrored map
    mirrored = m.predict(np.ascontiguousarray(x[..., ::-1]), np.ascontiguousarray(k[..., ::-1]), seed=0)
    np.testing.assert_allclose(mirrored.residual[..., ::-1], out.residual, atol=1e-5)
    for name, v in out.extra_maps.items():
        np.testing.assert_allclose(mirrored.extra_maps[name][..., ::-1], v, atol=1e-5)
    # a card without the key (calibrated before flip TTA) keeps the single pass
    m.score = {k2: v for k2, v in m.score.items() if k2 != "flip_tta"}
    try:
        np.testing.assert_array_equal(m.predict(x, k, seed=0).residual, once.residual)
    finally:
        m.score = {**m.score, "flip_tta": True}


def test_asr_cli_adds_a_refiner_to_an_existing_checkpoint_and_recalibrates(trained, ddad_data, tmp_path):
    from anomaly.methods.ddad import asr

    rc = asr.main(["--checkpoint", str(trained / "ddad"), "--data", str(ddad_data), "--out", str(tmp_path / "x"),
                   "--steps", "3", "--batch-size", "4", "--device", "cpu"])
    assert rc == 0
    card, before = _card(tmp_path / "x"), _card(trained / "ddad")
    assert card["asr_steps"] == 3 and card["score"]["map"] == "asr" and card["score"]["flip_tta"] and card["asr_command"].startswith("python -m")
    assert card["validation_before_asr"] == before["validation"] and "val_lesion_pixel_ap" in card["validation"]
    assert card["calibration"]["pixel_threshold"] > 0 and card["checkpoint_hash"] != before["checkpoint_hash"]
    clear_cache()
    a = get_method("ddad", trained / "ddad").net.state_dict()
    b = get_method("ddad", tmp_path / "x").net.state_dict()
    assert all(torch_equal(a[k], b[k]) for k in a)  # the ensembles are left as they were
    # refuses a checkpoint of another method
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "card.json").write_text(json.dumps({"method": "ae"}))
    assert asr.main(["--checkpoint", str(tmp_path / "other"), "--data", str(ddad_data)]) == 2
    # a damaged weights file is refused with a message, not a traceback, and left as it was
    bad = tmp_path / "bad"
    shutil.copytree(trained / "ddad", bad)
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    assert asr.main(["--checkpoint", str(bad), "--data", str(ddad_data), "--steps", "1"]) == 2
    assert (bad / "model.safetensors").read_bytes() == b"not safetensors"
    clear_cache()


def test_asr_asymmetry_inputs_train_load_and_stay_flip_equivariant(trained, ddad_data, val_lesion, tmp_path):
    import torch

    from anomaly.methods.ddad import asr

    # the input builder: mirror differences are antisymmetric, unknown channel names are refused
    x = torch.rand(2, 1, 16, 16)
    maps = {"ndm_mean": torch.rand(2, 1, 16, 16), "udm_mean": torch.rand(2, 1, 16, 16), "intra": torch.rand(2, 1, 16, 16)}
    names = asr.BASE_INPUTS + asr.ASYMMETRY_INPUTS
    inp = asr.refiner_inputs(x, maps, names)
    assert inp.shape == (2, 6, 16, 16)
    torch.testing.assert_close(inp[:, :4], asr.refiner_inputs(x, maps))  # the paper's four unchanged
    torch.testing.assert_close(inp[:, 4], -torch.flip(inp[:, 4], dims=[-1]))
    torch.testing.assert_close(inp[:, 4:5], (x - torch.flip(x, dims=[-1])) * asr.ASYMMETRY_GAIN)
    with pytest.raises(ValueError, match="unknown ASR input"):
        asr.refiner_inputs(x, maps, ("image", "t2"))
    assert asr.refiner_input_names(None) == asr.BASE_INPUTS
    # the CLI option trains a 6-channel refiner, the card names its inputs, and it loads back
    rc = asr.main(["--checkpoint", str(trained / "ddad"), "--data", str(ddad_data), "--out", str(tmp_path / "s"),
                   "--steps", "3", "--batch-size", "4", "--device", "cpu", "--asymmetry"])
    assert rc == 0
    card = _card(tmp_path / "s")
    assert card["asr"]["architecture"]["inputs"] == list(names) and "image_asymmetry" in card["asr"]["what"]
    clear_cache()
    m = get_method("ddad", tmp_path / "s")
    assert m.refiner_inputs == names and m.refiner.model[0].conv.unit0.conv.in_channels == 6
    x, k = val_lesion.images[:4], val_lesion.masks[:4]
    a, b = m.predict(x, k).residual, m.predict(x[..., ::-1], k[..., ::-1]).residual
    np.testing.assert_allclose(a, b[..., ::-1], atol=1e-6)
    clear_cache()


def test_asr_init_from_a_trained_head_starts_where_it_was(trained, ddad_data, tmp_path):
    import torch

    from anomaly.methods.ddad import asr

    torch.manual_seed(0)
    four = asr.build_refiner().eval()
    six = asr.build_refiner({"inputs": list(asr.BASE_INPUTS + asr.ASYMMETRY_INPUTS)}).eval()
    asr.init_from(six, four.state_dict())
    inp = torch.rand(2, 4, 32, 32)
    with torch.no_grad():  # the new channels start at zero weight: same output whatever they hold
        torch.testing.assert_close(six(torch.cat([inp, torch.rand(2, 2, 32, 32)], 1)), four(inp))
    with pytest.raises(ValueError, match="cannot start"):
        asr.init_from(four, six.state_dict())
    # the CLI: --from-head fine-tunes the checkpoint's own head and records where it started
    rc = asr.main(["--checkpoint", str(trained / "ddad"), "--data", str(ddad_data), "--out", str(tmp_path / "f"),
                   "--steps", "2", "--batch-size", "4", "--device", "cpu", "--from-head", "--asymmetry"])
    assert rc == 0
    card, before = _card(tmp_path / "f"), _card(trained / "ddad")
    assert card["asr_started_from"]["checkpoint_hash"] == before["checkpoint_hash"]
    assert card["asr_started_from"]["asr_steps"] == before["asr_steps"]
    clear_cache()
    # fine-tuning that 6-input head again keeps its inputs without --asymmetry
    assert asr.main(["--checkpoint", str(tmp_path / "f"), "--data", str(ddad_data), "--out", str(tmp_path / "g"),
                     "--steps", "1", "--batch-size", "4", "--device", "cpu", "--from-head"]) == 0
    assert _card(tmp_path / "g")["asr"]["architecture"]["inputs"] == _card(tmp_path / "f")["asr"]["architecture"]["inputs"]
    clear_cache()
    with pytest.raises(ValueError, match="not a weight"):
        asr.init_from(four, {"nope": torch.zeros(1)})
    bare = tmp_path / "bare"  # a checkpoint without a head cannot be fine-tuned
    shutil.copytree(trained / "ddad", bare)
    from anomaly.checkpoints import load_card, load_weights, save_checkpoint

    save_checkpoint(bare, {k: v for k, v in load_weights(bare).items() if not k.startswith("asr.")},
                    {k: v for k, v in load_card(bare).items() if k not in ("checkpoint_hash", "weights")})
    assert asr.main(["--checkpoint", str(bare), "--data", str(ddad_data), "--steps", "1", "--from-head"]) == 2
    clear_cache()


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_asr_batch_stream_is_reproducible_with_workers_and_a_wider_refiner_loads_back(trained, ddad_data, val_lesion,
                                                                                     tmp_path):
    import torch

    from anomaly.data.prepared import PreparedSet
    from anomaly.methods.ddad import asr
    from anomaly.training import batches

    n = 12
    healthy = PreparedSet(val_lesion.images[:n], val_lesion.masks[:n], np.zeros(n, int))

    def first(workers: int, k: int = 3):
        data = asr.CorruptedBatches(healthy, 4, [0, 7, 0], True, 0.0, 0.0)
        it = iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers))
        return [next(it) for _ in range(k)]

    # in-process: the same stream as one rng shared by batches() and synthetic_anomalies()
    rng = np.random.default_rng([0, 7, 0])
    for (xc, mb, tgt), (xb, mref) in zip(first(0), batches(healthy.images, healthy.masks, 4, rng, True, "cpu")):
        xr, tr = asr.synthetic_anomalies(xb[:, 0].numpy(), mref[:, 0].numpy().astype(bool), rng)
        np.testing.assert_array_equal(xc[:, 0].numpy(), xr)
        np.testing.assert_array_equal(tgt[:, 0].numpy(), tr.astype(np.float32))
        assert torch.equal(mb, mref)
    # two worker processes: reproducible, and the two workers' streams differ
    a, b = first(2, 4), first(2, 4)
    for (x1, m1, t1), (x2, m2, t2) in zip(a, b):
        assert torch.equal(x1, x2) and torch.equal(t1, t2) and torch.equal(m1, m2)
    assert not torch.equal(a[0][0], a[1][0])
    # the CLI trains a wider refiner with worker processes; the card records it and it loads back
    rc = asr.main(["--checkpoint", str(trained / "ddad"), "--data", str(ddad_data), "--out", str(tmp_path / "w"),
                   "--steps", "2", "--batch-size", "4", "--device", "cpu", "--channels", "8,16,32,64,128",
                   "--workers", "2"])
    assert rc == 0
    arch = _card(tmp_path / "w")["asr"]["architecture"]
    assert arch["channels"] == [8, 16, 32, 64, 128] and arch["strides"] == [2, 2, 2, 2]
    clear_cache()
    m = get_method("ddad", tmp_path / "w")
    out = m.predict(val_lesion.images[:2], val_lesion.masks[:2])
    assert out.residual.shape == val_lesion.images[:2].shape and np.isfinite(out.residual).all()
    # --from-head keeps the head's own widths
    assert asr.main(["--checkpoint", str(tmp_path / "w"), "--data", str(ddad_data), "--out", str(tmp_path / "w2"),
                     "--steps", "1", "--batch-size", "4", "--device", "cpu", "--from-head"]) == 0
    assert _card(tmp_path / "w2")["asr"]["architecture"]["channels"] == [8, 16, 32, 64, 128]
    clear_cache()
    for bad in ("8", "a,b", "8,0"):  # one width is not a UNet; widths are positive integers
        with pytest.raises(SystemExit) as e:
            asr.main(["--checkpoint", str(trained / "ddad"), "--data", str(ddad_data), "--steps", "1", "--channels", bad])
        assert e.value.code == 2
    for bad in ("-1", "two"):  # a usage error, not PyTorch's DataLoader message
        with pytest.raises(SystemExit) as e:
            asr.main(["--checkpoint", str(trained / "ddad"), "--data", str(ddad_data), "--steps", "1", "--workers", bad])
        assert e.value.code == 2


def test_the_asr_command_runs_without_a_second_module_copy():
    """``python -m anomaly.methods.ddad.asr`` (the documented ASR command): the package does not
    import the module first, so runpy gives no "found in sys.modules" warning."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "anomaly.methods.ddad.asr", "--help"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 0 and "--checkpoint" in r.stdout and "RuntimeWarning" not in r.stderr
