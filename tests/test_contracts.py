"""The contracts of docs/contracts.md: registry, result type, scoring path, calibration, keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomaly.calibration import Calibration, brain_fill, fit_calibration, fit_fill_reference, volume_score
from anomaly.errors import CheckpointError, UnknownMethodError
from anomaly.keys import study_key
from anomaly.methods.base import AnomalyMethod, MethodOutput, get_method, method_class, registered_methods, resolve_methods
from anomaly.data.prepared import load_prepared
from anomaly.preprocess import MODEL_SIZE, preprocess_slices
from anomaly.scoring import image_score_from_map, postprocess_residual, run_method

pytestmark = pytest.mark.timeout(300)


def test_registry_names_are_lower_case_and_have_citations():
    names = registered_methods()
    assert {"zscore", "ae"} <= set(names)
    for n in names:
        cls = method_class(n)
        assert n == n.lower() and issubclass(cls, AnomalyMethod)
        assert cls.title and cls.paper and cls.citation


def test_unknown_method_is_a_typed_error():
    with pytest.raises(UnknownMethodError, match="nosuch"):
        resolve_methods("ae,nosuch")


def test_postprocess_masks_and_median_filters():
    r = np.zeros((1, 32, 32), np.float32)
    r[0, 10, 10] = 5.0  # isolated speck: removed by the 5x5 median
    r[0, 20:26, 20:26] = 2.0  # a blob survives
    mask = np.ones((1, 32, 32), bool)
    mask[0, :, :4] = False
    r[0, :, :4] = 9.0  # outside the brain: zeroed
    out = postprocess_residual(r, mask)
    assert out[0, 10, 10] == 0 and out[0, 23, 23] == 2.0 and out[0, :, :4].max() == 0


def test_scored_slices_need_a_quarter_of_the_largest_brain_section_in_the_scans_own_pixels():
    """A small skull-base section fills its own brain box in the model frame, but is not scored;
    nor is a slice without brain. The sections are compared in the scan's pixels."""
    rng = np.random.default_rng(0)
    n, h = 6, 96
    yy, xx = np.mgrid[:h, :h]
    vol = rng.normal(0.05, 0.01, (n, h, h)).astype(np.float32)
    masks = np.zeros((n, h, h), bool)
    for i, r in enumerate([6, 30, 40, 40, 38, 0]):  # radii: a skull-base section, brain, nothing
        if r:
            masks[i] = (yy - h / 2) ** 2 + (xx - h / 2) ** 2 <= r * r
    vol[masks] += 1.0 + rng.normal(0, 0.05, masks.sum()).astype(np.float32)
    prep = preprocess_slices(vol, masks=masks)
    assert prep.masks[0].sum() > 0.5 * prep.masks[2].sum()  # in the model frame slice 0 looks as large
    assert prep.valid.tolist() == [False, True, True, True, True, False]
    # one image alone is scored if it holds enough brain
    assert preprocess_slices(vol[:1], masks=masks[:1]).valid.tolist() == [True]


def test_image_score_is_mean_of_top_percent():
    maps = np.zeros((1, 10, 10), np.float32)
    maps[0, 0, 0] = 7.0
    masks = np.ones((1, 10, 10), bool)
    assert image_score_from_map(maps, masks)[0] == pytest.approx(7.0)  # top 1% of 100 px = 1 px


def test_calibration_percentiles_and_threshold():
    rng = np.random.default_rng(0)
    maps = rng.random((20, 16, 16)).astype(np.float32)
    masks = np.ones_like(maps, bool)
    scores = np.linspace(0, 1, 20)
    cal = fit_calibration(maps, masks, scores)
    assert cal.pixel_threshold == pytest.approx(np.percentile(maps, 99.5))
    p = cal.percentile([-1, 0.5, 2])
    assert p[0] == 0 and p[2] == 100 and 45 < p[1] < 55
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    assert volume_score(np.array([1, 5, 3]), np.array([True, False, True])) == 3


def test_fill_conditioning_ranks_scores_against_healthy_slices_of_the_same_fill():
    # healthy slices: small-brain slices (skull base, vertex) score high, large ones low
    rng = np.random.default_rng(0)
    fill = np.concatenate([rng.uniform(1000, 3000, 200), rng.uniform(8000, 10000, 200)])
    raw = np.where(fill < 5000, 1.0, 0.2) + rng.normal(0, 0.05, len(fill))
    ref = fit_fill_reference(raw, fill)
    z = ref.condition(raw, fill)
    for part in (fill < 5000, fill >= 5000):  # each fill range is centred on its own healthy median
        assert abs(np.median(z[part])) < 0.2
    # a large slice with a raw score below a healthy small slice's now ranks above it
    assert ref.condition([0.6], [9000])[0] > ref.condition([1.0], [2000])[0]
    # the calibration stores it, uses it for its quantiles and round-trips through the card
    maps = rng.random((len(fill), 8, 8)).astype(np.float32)
    cal = fit_calibration(maps, np.ones_like(maps, bool), raw, fill=fill)
    assert cal.fill_reference is not None
    np.testing.assert_allclose(cal.condition(raw, fill), z)
    assert 40 < cal.percentile([0.0])[0] < 60  # a healthy-median slice sits near the 50th percentile
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    # cards without a reference keep the raw score
    plain = fit_calibration(maps, np.ones_like(maps, bool), raw)
    assert "fill_reference" not in plain.to_dict()
    np.testing.assert_array_equal(plain.condition(raw, fill), raw)
    assert brain_fill(np.ones((2, 4, 4), bool)).tolist() == [16.0, 16.0]
    # a malformed reference in a card is a typed error, not a crash at scoring time
    good = cal.to_dict()
    for bad in ({"log_fill": [1.0, 2.0], "median": [0.1]},  # a key missing
                {"log_fill": [1.0, 2.0], "median": [0.1], "spread": [0.1, 0.2]},  # lengths differ
                {"log_fill": [2.0, 1.0], "median": [0.1, 0.2], "spread": [0.1, 0.2]},  # not increasing
                {"log_fill": [1.0, 2.0], "median": [0.1, float("nan")], "spread": [0.1, 0.2]},
                "not a dict"):
        with pytest.raises(CheckpointError, match="calibration is malformed"):
            Calibration.from_dict({**good, "fill_reference": bad})


def test_run_method_reports_conditioned_and_raw_scores(tiny_checkpoints, tiny_dataset):
    from anomaly.data.folder import read_image

    prep = preprocess_slices(read_image(tiny_dataset / "test" / "images" / "l065.png"))
    m = get_method("ae", tiny_checkpoints / "ae")
    res = run_method(m, prep)
    np.testing.assert_allclose(res.raw_scores, image_score_from_map(res.anomaly_map, prep.masks))
    np.testing.assert_allclose(res.scores, m.calibration.condition(res.raw_scores, brain_fill(prep.masks)))
    assert m.calibration.fill_reference is not None  # training fits the reference


def test_calibration_recomputed_on_a_folder_ranks_its_own_healthy_slices_in_the_middle(tiny_checkpoints, tiny_dataset):
    # evaluate's --val-data path loads methods whose cards already condition their scores: it must
    # fit on the raw scores, or the recomputed quantiles would be on another scale than the scores
    from anomaly.evaluate import calibrate_on
    from anomaly.methods.base import clear_cache

    clear_cache()
    methods = {n: get_method(n, tiny_checkpoints / n) for n in ("zscore", "ae")}
    cals = calibrate_on(tiny_dataset / "val_normal", methods, progress=False)
    vn = load_prepared(tiny_dataset / "val_normal", use_brainmasks=False, cache=False)
    prep = preprocess_slices(vn.images)  # the scoring path's own view of the same slices
    for name, m in methods.items():
        assert cals[name].fill_reference is not None
        res = run_method(m, prep)
        raw = res.raw_scores[prep.valid]
        p = cals[name].percentile(cals[name].condition(raw, brain_fill(prep.masks[prep.valid])))
        assert 25 <= float(np.median(p)) <= 75, (name, np.median(p))


def test_prepared_cache_is_written_whole_and_reused(tiny_dataset, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "val_normal"
    shutil.copytree(tiny_dataset / "val_normal", root)
    first = load_prepared(root)
    caches = sorted(p.name for p in root.glob(".prepared-*"))
    assert len(caches) == 1 and caches[0].endswith(".npz") and ".tmp." not in caches[0]  # renamed into place
    monkeypatch.setattr("anomaly.data.prepared.preprocess_slices", None)  # a second load must not preprocess
    again = load_prepared(root)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.names == again.names


def test_study_key_is_salted_and_stable():
    a = study_key("1.2.3", salt="s1")
    assert a == study_key("1.2.3", salt="s1") and a != study_key("1.2.3", salt="s2")
    assert a.startswith("sk-") and "1.2.3" not in a


def test_trained_methods_follow_the_result_contract(tiny_checkpoints, tiny_dataset):
    from anomaly.data.folder import read_image

    img = read_image(tiny_dataset / "test" / "images" / "l065.png")
    prep = preprocess_slices(img)
    assert prep.images.shape == (1, MODEL_SIZE, MODEL_SIZE)
    for name in ("zscore", "ae"):
        m = get_method(name, tiny_checkpoints / name)
        assert get_method(name, tiny_checkpoints / name) is m  # loaded once, cached
        out = m.predict(prep.images, prep.masks, seed=0)
        assert isinstance(out, MethodOutput)
        assert out.residual.shape == prep.images.shape and out.pseudo_healthy.shape == prep.images.shape
        res = run_method(m, prep)
        assert res.calibration is not None and res.calibration.pixel_threshold > 0
        full = prep.to_original(res.calibrated_map)
        assert full.shape == img.shape  # maps come back at the input's resolution
        assert 0 <= res.percentiles[0] <= 100
        card = json.loads((tiny_checkpoints / name / "card.json").read_text())
        for key in ("method", "input_size", "normalisation", "training_data", "command", "seed", "calibration", "checkpoint_hash", "validation"):
            assert key in card


def test_ae_is_deterministic_and_reloads_identically(tiny_checkpoints, tiny_dataset, tmp_path):
    from anomaly.train import train
    from anomaly.training import TrainConfig

    c1 = train("ae", tiny_dataset, tmp_path / "a", TrainConfig(seed=3, max_steps=3, batch_size=4))
    c2 = train("ae", tiny_dataset, tmp_path / "b", TrainConfig(seed=3, max_steps=3, batch_size=4))
    assert c1["checkpoint_hash"] == c2["checkpoint_hash"]


def test_checkpoint_hash_mismatch_is_refused(tiny_checkpoints, tmp_path):
    import shutil

    from anomaly.methods.base import clear_cache

    d = tmp_path / "zscore"
    shutil.copytree(tiny_checkpoints / "zscore", d)
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(data))
    clear_cache()
    with pytest.raises(CheckpointError, match="hash"):
        get_method("zscore", d)


def test_residual_higher_inside_lesion_for_zscore(tiny_checkpoints, tiny_dataset):
    from anomaly.data.folder import read_image, read_mask

    img = read_image(tiny_dataset / "test" / "images" / "l065.png")
    mask = read_mask(tiny_dataset / "test" / "masks" / "l065.png")[0]
    assert mask.any()
    prep = preprocess_slices(img)
    res = run_method(get_method("zscore", tiny_checkpoints / "zscore"), prep)
    full = prep.to_original(res.anomaly_map)[0]
    brain = prep.original_masks[0]
    assert full[mask & brain].mean() > 2 * full[~mask & brain].mean()


def test_consensus_reuses_member_results_exactly(tiny_checkpoints, tiny_dataset):
    from anomaly.data.folder import read_image
    from anomaly.methods.consensus import from_member_results

    img = read_image(tiny_dataset / "test" / "images" / "l065.png")
    prep = preprocess_slices(img)
    cons = get_method("consensus", tiny_checkpoints / "consensus")
    assert cons.members == ["zscore", "ae"] or set(cons.members) == {"zscore", "ae"}
    direct = run_method(cons, prep)
    members = {n: run_method(get_method(n, tiny_checkpoints / n), prep) for n in cons.members}
    reused = from_member_results(cons, prep, members)
    np.testing.assert_allclose(direct.anomaly_map, reused.anomaly_map, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(direct.scores, reused.scores, rtol=1e-5)
    votes = direct.extra_maps["votes"]  # the share of members flagging each pixel: k / n
    assert 0 <= votes.min() and votes.max() <= 1.0
    np.testing.assert_allclose(votes * len(cons.members), np.round(votes * len(cons.members)), atol=1e-5)
    np.testing.assert_allclose(reused.extra_maps["votes"], votes)
    from anomaly.methods.consensus import Consensus

    assert "votes" in Consensus.extra_map_scales


def test_flip_averaged_means_both_orientations_and_keeps_missing_parts_missing():
    import numpy as np

    from anomaly.methods.base import MethodOutput, flip_averaged

    def predict(images, masks, seed=0):  # a deliberately asymmetric toy method
        ramp = np.arange(images.shape[-1], dtype=np.float32)
        return MethodOutput(pseudo_healthy=None, residual=images * ramp, image_score=images[..., 0].sum((1,)),
                            extra_maps={"e": images + ramp})

    x = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    m = np.ones_like(x, bool)
    out = flip_averaged(predict, x, m, seed=3)
    ramp = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(out.residual, 0.5 * (x * ramp + x * ramp[::-1]), rtol=1e-6)
    np.testing.assert_allclose(out.extra_maps["e"], x + 1.5, rtol=1e-6)
    np.testing.assert_allclose(out.image_score, 0.5 * (x[..., 0].sum(1) + x[..., -1].sum(1)), rtol=1e-6)
    assert out.pseudo_healthy is None and out.residual.dtype == np.float32


@pytest.mark.parametrize("name", ["ae", "dae", "ddad", "fanogan", "feature"])
def test_channels_last_layout_keeps_the_bundled_methods_results(name, tiny_dataset):
    """Methods run in channels-last layout (faster on CPU); the maps must be those of the default layout."""
    import torch

    from anomaly.data.folder import read_image
    from anomaly.methods.base import to_channels_last, torch_modules

    prep = preprocess_slices(read_image(tiny_dataset / "test" / "images" / "l065.png"))
    m = method_class(name)()  # the bundled checkpoint, loaded channels-last
    assert to_channels_last(m), "the method holds no torch module"
    modules = torch_modules(m).values()
    weights = [p for mod in modules for p in mod.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    fast = m.predict(prep.images, prep.masks, seed=0).residual
    for mod in modules:
        mod.to(memory_format=torch.contiguous_format)
    plain = m.predict(prep.images, prep.masks, seed=0).residual
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(fast, plain, atol=1e-4 * float(np.abs(plain).max()))


def test_consensus_follows_its_members_checkpoints(tiny_checkpoints, tiny_dataset, tmp_path):
    """A consensus calibrated on a member's old maps refuses to load (typed error naming the member);
    retraining a member with ``anomaly.train`` re-calibrates the consensus beside it."""
    import json
    import shutil

    from anomaly.errors import CheckpointError
    from anomaly.methods.base import clear_cache
    from anomaly.methods.consensus import stale_members
    from anomaly.train import train
    from anomaly.training import TrainConfig

    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints, root)
    card = json.loads((root / "consensus" / "card.json").read_text())
    assert stale_members(card, root) == []
    old_ae = card["member_hashes"]["ae"]
    # a member changed by hand (copied in from elsewhere): refused, not scored on a stale calibration
    ae_card = json.loads((root / "ae" / "card.json").read_text())
    (root / "ae" / "card.json").write_text(json.dumps({**ae_card, "checkpoint_hash": "0" * 16}))
    clear_cache()
    with pytest.raises(CheckpointError, match="ae"):
        get_method("consensus", root / "consensus")
    (root / "ae" / "card.json").write_text(json.dumps(ae_card))
    clear_cache()
    # retrained through the CLI's path: the consensus is re-calibrated with the new member
    new = train("ae", tiny_dataset, root / "ae", TrainConfig(seed=1, max_steps=5, batch_size=8))
    assert new["checkpoint_hash"] != old_ae
    cons = json.loads((root / "consensus" / "card.json").read_text())
    assert cons["member_hashes"]["ae"] == new["checkpoint_hash"] and stale_members(cons, root) == []
    assert "after ae was retrained" in cons["command"]
    clear_cache()
    assert get_method("consensus", root / "consensus").members
    clear_cache()
    # a member re-calibrated (same weights, another threshold) makes it stale as well
    ae_card = json.loads((root / "ae" / "card.json").read_text())
    ae_card["calibration"]["pixel_threshold"] *= 1.5
    (root / "ae" / "card.json").write_text(json.dumps(ae_card))
    assert stale_members(cons, root) == ["ae"]


def test_every_shipped_checkpoint_has_a_complete_card_and_fits_the_budget():
    """Each bundled model (main and held-out) carries the card fields the methods issue names, its
    weights match the card's hash, and all checkpoints together stay under 60 MB."""
    import json

    from anomaly.checkpoints import load_weights

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    required = ("method", "input_size", "normalisation", "training_data", "command", "seed", "wall_time_s",
                "trained_on", "calibration", "validation", "checkpoint_hash")
    cards = sorted(p for p in [*root.glob("*/card.json"), *root.glob("loo/*/card.json")] if p.parent.name != "brainmask")
    assert {p.parent.name for p in cards} >= {"ae", "vae", "dae", "fanogan", "ddad", "anoddpm", "feature", "zscore", "consensus"}
    for p in cards:
        card = json.loads(p.read_text())
        missing = [k for k in required if k not in card]
        assert not missing, f"{p}: {missing}"
        assert card["method"] == p.parent.name and card["input_size"] == [128, 128]
        assert card["calibration"]["pixel_threshold"] > 0 and len(card["calibration"]["score_quantiles"]) > 10
        assert card["weights"].endswith(".safetensors") and (p.parent / card["weights"]).is_file()
        assert load_weights(p.parent)  # the hash recorded in the card is checked on load
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 60e6
    assert not [f for f in root.rglob("*") if f.suffix in (".pt", ".pth", ".pkl", ".ckpt")]


def test_a_method_module_that_fails_to_import_leaves_the_others_working(tmp_path, monkeypatch, caplog):
    """Adding a method is one file: one whose optional dependency is missing must not take the
    registry (and with it the app, evaluate and batch) down; asking for it says why it is missing."""
    import anomaly.methods as pkg
    from anomaly.methods import base

    (tmp_path / "brokenmethod.py").write_text("import no_such_package_here  # noqa\n")
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    monkeypatch.setattr(base, "_DISCOVERED", False)
    monkeypatch.setattr(base, "UNAVAILABLE", {})
    with caplog.at_level("WARNING"):
        names = registered_methods()
    assert {"zscore", "ae", "ddad"} <= set(names) and "brokenmethod" not in names
    assert "brokenmethod" in caplog.text and "no_such_package_here" in caplog.text
    with pytest.raises(UnknownMethodError, match="'brokenmethod' could not be loaded.*ModuleNotFoundError"):
        method_class("brokenmethod")


def test_a_method_without_a_card_is_refused_not_scored_uncalibrated(tmp_path):
    from anomaly.methods.base import register, _REGISTRY

    @register
    class NoWeights(AnomalyMethod):
        name = "noweightsprobe"
        title = paper = citation = "probe"

        def predict(self, images, masks, seed=0):
            return MethodOutput(pseudo_healthy=images, residual=np.zeros_like(images))

    try:
        with pytest.raises(CheckpointError, match="no card at .*card.json: train the method first"):
            get_method("noweightsprobe", tmp_path / "noweightsprobe")
    finally:
        _REGISTRY.pop("noweightsprobe", None)


def test_the_on_demand_panel_is_named_by_its_methods():
    from anomaly.ui.callbacks import on_demand_heading

    assert method_class("anoddpm").title in on_demand_heading(["anoddpm"])
    assert "none" in on_demand_heading([])


def _disc_in_mm(shape, spacing, radius_mm, value=100.0):
    """A filled disc of ``radius_mm`` drawn on a grid whose pixels are ``spacing`` (row, col) mm."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    y, x = (rr - shape[0] / 2) * spacing[0], (cc - shape[1] / 2) * spacing[1]
    return np.where(y**2 + x**2 <= radius_mm**2, value, 0.0).astype(np.float32)


def test_non_square_pixels_reach_the_model_in_true_proportions():
    """A round brain scanned with 2 x 1 mm pixels is an ellipse in pixels; the model must see a disc
    (a box square in mm, resized to the square frame), and maps must go back onto the scan's grid."""
    from anomaly.preprocess import preprocess_slices, square_box

    rng = np.random.default_rng(0)
    m = rng.random((60, 80)) > 0.2
    m[:5], m[-5:] = False, False
    assert square_box(m) == square_box(m, aspect=1.0)  # square pixels: the box as before, square in pixels
    r0, c0, h, w = square_box(m, aspect=2.0)
    assert abs(h * 2.0 - w) <= 2  # rows of 2 mm: half as many rows as columns, the same millimetres
    disc = _disc_in_mm((90, 160), (2.0, 1.0), 60.0)
    mask = disc > 0
    for spacing, expect_round in (((2.0, 1.0), True), (None, False)):
        prep = preprocess_slices(disc[None] + 1.0, masks=mask[None], pixel_spacing=spacing)
        rows, cols = np.nonzero(prep.masks[0])
        ratio = (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)
        assert (abs(ratio - 1.0) < 0.05) == expect_round, (spacing, ratio)
        back = prep.to_original(prep.masks[:1].astype(np.float32))[0] > 0.5
        assert back.shape == mask.shape and (back & mask).sum() / mask.sum() > 0.97


def test_scans_and_folders_pass_their_pixel_spacing(tmp_path):
    """The app (``preprocess_scan``, every plane) and training/evaluation folders (NIfTI header)
    give preprocessing the pixel spacing; a PNG has none."""
    import nibabel as nib

    from anomaly.data.folder import read_pixel_spacing
    from anomaly.io import load_scan
    from anomaly.preprocess import preprocess_scan

    # a sphere of radius 40 mm in a volume of 1 x 1 x 4 mm voxels (4 mm slices): round in every plane
    zz, yy, xx = np.mgrid[:30, :100, :100]
    vol = np.where(((zz - 15) * 4.0) ** 2 + (yy - 50.0) ** 2 + (xx - 50.0) ** 2 <= 40.0**2, 100.0, 1.0).astype(np.float32)
    ras = np.transpose(vol, (2, 1, 0))  # (x, y, z)
    p = tmp_path / "aniso.nii.gz"
    nib.save(nib.Nifti1Image(ras, np.diag([1.0, 1.0, 4.0, 1.0])), str(p))
    scan = load_scan(p)
    for plane in ("axial", "coronal"):
        prep = preprocess_scan(scan, plane)
        mid = int(np.argmax(prep.original_masks.reshape(len(prep), -1).sum(1)))
        rows, cols = np.nonzero(prep.masks[mid])
        assert abs((rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1) - 1.0) < 0.1, plane
    nib.save(nib.Nifti1Image(ras, np.diag([1.0, 2.0, 4.0, 1.0])), str(tmp_path / "b.nii.gz"))
    assert read_pixel_spacing(tmp_path / "b.nii.gz") == (2.0, 1.0)  # rows run front to back (y), columns x
    from PIL import Image

    Image.fromarray(vol[15].astype(np.uint8)).save(tmp_path / "s.png")
    assert read_pixel_spacing(tmp_path / "s.png") is None
