"""Rendering config and the out-of-distribution verdict (pure functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly.ood import image_reasons, metadata_reasons, verdict
from anomaly.render import GridRow, RenderConfig, colorbar, compose_grid, heatmap_rgb, overlay_rgb
from anomaly.scan import Scan

pytestmark = pytest.mark.timeout(60)


def test_heatmap_uses_the_shared_calibrated_scale():
    cfg = RenderConfig(vmax=2.0)
    m = np.array([[0.0, 2.0, 4.0]])
    rgb = heatmap_rgb(m, cfg)
    assert np.array_equal(rgb[0, 1], rgb[0, 2])  # clipped at vmax, not rescaled per image
    assert not np.array_equal(rgb[0, 0], rgb[0, 1])


def test_overlay_only_above_threshold_and_contour():
    img = np.full((40, 40), 100, np.uint8)
    m = np.zeros((40, 40), np.float32)
    m[10:20, 10:20] = 2.0
    out = overlay_rgb(img, m, RenderConfig(threshold=1.0, mode="fill", alpha=0.5))
    assert (out[0, 0] == 100).all() and not (out[15, 15] == 100).all()
    cont = overlay_rgb(img, m, RenderConfig(threshold=1.0, mode="contour"))
    assert tuple(cont[10, 15]) == RenderConfig().contour_rgb and (cont[15, 15] == 100).all()
    # a small slice's contour is one pixel wide: a 10-pixel region keeps its inside visible
    green = (cont == RenderConfig().contour_rgb).all(axis=-1)
    assert green[10:20, 10:20].sum() == 36 and not green[11:19, 11:19].any() and not green[9].any()
    big = np.zeros((600, 600), np.float32)
    big[200:300, 200:300] = 2.0
    thick = (overlay_rgb(np.full((600, 600), 100, np.uint8), big, RenderConfig(mode="contour")) == RenderConfig().contour_rgb).all(-1)
    assert thick[250, 199:202].all()  # a large slice, shrunk on the panel: a thicker line


def test_uncalibrated_rows_blend_without_a_threshold():
    from anomaly.render import blend_rgb

    img = np.full((40, 40), 100, np.uint8)
    m = np.zeros((40, 40), np.float32)
    m[10:20, 10:20] = 0.6  # below the threshold: a thresholded overlay would show nothing here
    m[25:30, 25:30] = 3.0
    cfg = RenderConfig(threshold=1.0, mode="both", alpha=0.5)
    b = blend_rgb(img, m, cfg)
    assert (b[0, 0] == 100).all() and not (b[15, 15] == 100).all()
    assert np.abs(b[27, 27].astype(int) - 100).sum() > np.abs(b[15, 15].astype(int) - 100).sum()  # in proportion
    assert not (b == cfg.contour_rgb).all(axis=-1).any()  # no threshold contour
    rows = [GridRow("ddad", img, img, m), GridRow("ddad · intra discrepancy", img, None, m, map_title="intra discrepancy",
                                                  calibrated=False)]
    g = np.asarray(compose_grid(rows, cfg))
    ov_cal, ov_extra = g[20:276, 3 * 256:4 * 256], g[20 + 278:276 + 278, 3 * 256:4 * 256]
    assert not np.array_equal(ov_cal, ov_extra)


def test_grid_has_one_row_per_method():
    img = np.zeros((64, 64), np.uint8)
    rows = [GridRow("a", img, img, np.zeros((64, 64))), GridRow("b", img, None, np.ones((64, 64)))]
    g = compose_grid(rows, RenderConfig(), "axial")
    assert g.size[1] > 2 * 256 and colorbar(RenderConfig()).size[1] == 256


def test_ood_from_metadata():
    ct = Scan(np.zeros((2, 8, 8)), modality="CT")
    assert metadata_reasons(ct)
    pd = Scan(np.zeros((2, 8, 8)), modality="MR", meta={"EchoTime": 15, "RepetitionTime": 3000})
    assert any("T1" in r for r in metadata_reasons(pd))
    t1 = Scan(np.zeros((2, 8, 8)), modality="MR", meta={"EchoTime": 3, "RepetitionTime": 500})
    assert metadata_reasons(t1) == []
    chest = Scan(np.zeros((1, 8, 8)), modality="MR", meta={"BodyPartExamined": "CHEST"})
    assert metadata_reasons(chest)


def test_ood_from_the_scores_reads_a_majority_of_the_reference_models_only():
    valid = np.ones(5, bool)
    off, low = np.full(5, 100.0), np.array([10, 50, 99.5, 30, 20.0])
    assert image_reasons({"ae": off, "dae": off, "vae": low}, valid)
    assert image_reasons({"ae": off, "dae": off}, valid)
    # one of three is no majority; other methods neither add nor take away evidence
    assert not image_reasons({"ae": off, "dae": low, "vae": low, "ddad": off, "feature": off}, valid)
    assert image_reasons({"ae": off, "dae": off, "vae": low, "zscore": low}, valid)
    assert not image_reasons({"ae": off}, valid)  # one reference model alone: no check
    assert not image_reasons({"ae": off[:4], "dae": off[:4]}, np.ones(4, bool))  # too few slices
    v = verdict(Scan(np.zeros((5, 8, 8))), {"ae": off, "vae": off}, valid)
    assert not v.in_distribution and "not trained" in v.banner and "2 of the 2 reference models (ae and vae)" in v.banner


def test_one_verdict_per_scan_whichever_methods_are_ticked():
    """A healthy brain of another scanner (the bundled ITK subject) is out of distribution with the
    z-score baseline alone as with the reference models; a bundled example is in it either way."""
    from anomaly.analysis import analyse
    from anomaly.io import load_scan

    root = Path(__file__).resolve().parents[1]
    itk = load_scan([str(root / "assets/templates/itk_subject_t1_2x2x3mm.nii.gz")])
    alone, with_ref = analyse(itk, ["zscore"]), analyse(itk, ["zscore", "ae", "vae", "dae"])
    assert list(alone.results) == ["zscore"]  # the reference models are not added to the results
    assert not alone.ood.in_distribution and alone.ood.reasons == with_ref.ood.reasons
    assert "reference models" in alone.ood.reasons[0]
    healthy = analyse(load_scan([str(root / "assets/examples/healthy_t1.nii.gz")]), ["zscore"])
    assert healthy.ood.in_distribution
    # ticking a method afterwards keeps the scan's verdict, and so does another plane in the app
    assert alone.with_methods(["zscore", "ae"]).ood.reasons == alone.ood.reasons
    from anomaly.ui import callbacks as cb

    key, a = cb.load_and_analyse([str(root / "assets/templates/itk_subject_t1_2x2x3mm.nii.gz")], ["zscore"])
    _, cor = cb.reanalyse_plane(key, "coronal")
    assert cor.plane == "coronal" and cor.ood.reasons == a.ood.reasons and not cor.ood.in_distribution
    _, sag = cb.reanalyse_plane(cb.reanalyse_plane(key, "coronal")[0], "sagittal")  # by way of coronal
    assert sag.ood.reasons == a.ood.reasons
    # a coronal analysis first (as the API's plane='coronal'): the score check runs on the axial plane
    import anomaly.analysis as an

    an._AXIAL_SCORE_REASONS.clear()
    first = analyse(itk, ["zscore"], plane="coronal")
    assert first.ood.reasons == a.ood.reasons


def test_a_mask_text_or_flat_drawing_is_not_a_brain():
    from anomaly.io import load_scan
    from anomaly.ood import content_reasons
    from anomaly.preprocess import preprocess_scan

    root = Path(__file__).resolve().parents[1]
    mask = load_scan([str(root / "assets/examples/synthetic_tumour_t1_axial_mask.png")])
    r = content_reasons(mask, preprocess_scan(mask, "axial"))
    assert r and "few grey levels" in r[0]
    yy, xx = np.mgrid[:200, :200]
    ellipse = Scan(np.where(((yy - 100) / 80.0) ** 2 + ((xx - 100) / 60.0) ** 2 <= 1, 140.0, 0.0)[None])
    assert "few grey levels" in verdict(ellipse, prepared=preprocess_scan(ellipse, "axial")).banner
    brain = load_scan([str(root / "assets/examples/synthetic_tumour_t1_axial.png")])
    assert content_reasons(brain, preprocess_scan(brain, "axial")) == []
    # anti-aliased white text on black: many grey levels at the letters' edges, but mostly background
    from PIL import Image, ImageDraw, ImageFont

    big = Image.new("L", (1024, 1024), 0)
    d = ImageDraw.Draw(big)
    for i, line in enumerate(["HELLO", "WORLD 42", "QUICK FOX"]):
        d.text((80, 150 + 250 * i), line, fill=255, font=ImageFont.load_default(size=150))
    text = np.asarray(big.resize((256, 256), Image.LANCZOS), np.float32)
    scan = Scan(text[None])
    prep = preprocess_scan(scan, "axial")
    from anomaly.ood import MIN_BRAIN_ENTROPY_BITS, brain_entropy_bits

    assert content_reasons(scan, prep)  # few grey levels, or background between the letters
    # many grey levels (as anti-aliased text at 20-36 px had: 3.8-4.1 bits) but a fifth of the head
    # as dark as the background: the entropy check passes it, the dark check does not
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    imgs = rng.uniform(0.3, 1.2, (1, 64, 64)).astype(np.float32)
    imgs[0, :, :13] = 0.0
    fake = SimpleNamespace(images=imgs, masks=np.ones((1, 64, 64), bool), valid=np.array([True]))
    assert brain_entropy_bits(fake) >= MIN_BRAIN_ENTROPY_BITS
    r = content_reasons(Scan(np.ones((1, 64, 64), np.float32) * np.pad(np.ones((60, 60)), 2)[None]), fake)
    assert r and "as dark as the background" in r[0] and "20%" in r[0]
    imgs[0, :, :13] = 0.5  # a brain-like head: none of it at background level
    assert content_reasons(Scan(np.pad(np.ones((60, 60), np.float32), 2)[None]), fake) == []


def test_ood_from_the_pixels_a_head_has_dark_background_noise_has_not():
    from anomaly.io import load_scan
    from anomaly.ood import content_reasons, rim_level

    root = Path(__file__).resolve().parents[1]
    for p in ("assets/examples/healthy_with_skull_t1_axial.png", "assets/examples/synthetic_tumour_t1.nii.gz",
              "assets/templates/itk_subject_t1_2x2x3mm.nii.gz"):
        assert content_reasons(load_scan([str(root / p)])) == [], p
    assert content_reasons(load_scan(sorted(str(p) for p in (root / "assets/dicom/brain_pd_series").glob("*.dcm")))) == []
    noise = Scan(np.random.default_rng(0).uniform(0, 255, (1, 300, 400)).astype(np.float32))
    r = content_reasons(noise)
    assert r and "dark background" in r[0]
    v = verdict(noise)
    assert not v.in_distribution and "dark background" in v.banner
    assert rim_level(np.zeros((4, 4))) == 0.0 and rim_level(np.ones((1, 5))) == 0.0
    assert content_reasons(Scan(np.zeros((3, 8, 8)))) == []  # blank slices are no evidence either way
    with_nan = np.zeros((20, 20)); with_nan[5:15, 5:15] = 1.0; with_nan[0, 0] = np.nan
    assert rim_level(with_nan) == 0.0


def test_all_four_orientation_letters_are_visible_on_the_input_panel():
    """The top letter (A on axial) was painted over by the panel's title bar."""
    from anomaly.render import PANEL

    img = np.full((100, 100), 40, np.uint8)
    grid = np.asarray(compose_grid([GridRow("m", img, None, np.zeros((100, 100)), "c")], RenderConfig(), "axial"))
    panel = grid[20:20 + PANEL, :PANEL]  # the first row's input panel, below the row caption
    yellow = (panel[..., 0] > 200) & (panel[..., 1] > 200) & (panel[..., 2] < 80)
    h, w = yellow.shape
    top, bottom = yellow[: h // 4, w // 3: 2 * w // 3], yellow[3 * h // 4:, w // 3: 2 * w // 3]
    left, right = yellow[h // 3: 2 * h // 3, : w // 6], yellow[h // 3: 2 * h // 3, 5 * w // 6:]
    assert top.any() and bottom.any() and left.any() and right.any()


def test_map_panels_name_their_method(monkeypatch):
    """On a phone the grid scrolls sideways past the row caption: the map and overlay panels carry the
    method's name (an extra map's too), the input and pseudo-healthy panels do not need it."""
    import anomaly.render as render
    from anomaly.render import GridRow, RenderConfig, compose_grid

    titles = []
    real = render.label_panel
    monkeypatch.setattr(render, "label_panel", lambda p, t: titles.append(t) or real(p, t))
    img = np.full((40, 30), 128, np.uint8)
    cal = np.zeros((40, 30), np.float32)
    compose_grid([GridRow("ae", img, img, cal, "score 1"),
                  GridRow("ddad · uncertainty", img, None, cal, "x", map_title="uncertainty", calibrated=False)],
                 RenderConfig())
    assert titles[2:4] == ["residual map · ae", "overlay · ae"]
    assert titles[6:8] == ["uncertainty · ddad", "blend (no threshold) · ddad"]
    assert titles[0] == "input" and "·" not in titles[1]
