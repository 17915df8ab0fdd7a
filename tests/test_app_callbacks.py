"""UI callbacks end to end, without the UI: load a real scan, analyse, render, findings, API JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.errors import AnomalyError
from anomaly.ui import callbacks as cb

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def methods_root(tiny_checkpoints, monkeypatch_module):
    import anomaly.methods.base as base

    monkeypatch_module.setattr(base, "CHECKPOINT_ROOT", tiny_checkpoints)
    base.clear_cache()
    yield tiny_checkpoints
    base.clear_cache()


@pytest.fixture(scope="module")
def lesion_volume(tmp_path_factory):
    """A real MNI152 sub-volume at 2 mm with a dark synthetic blob on a few slices."""
    from anomaly.data.folder import read_image, write_image

    v = read_image(ROOT / "assets/templates/mni152_2009a_t1_1mm.nii.gz")[40:150:2, ::2, ::2].copy()
    v[30:34, 50:62, 40:52] *= 0.2
    d = tmp_path_factory.mktemp("vol")
    p = write_image(d, "vol", v, spacing=(2.0, 2.0, 2.0))
    return p


def test_volume_round_trip_through_callbacks(methods_root, lesion_volume):
    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore", "ae"], "axial")
    assert set(a.results) == {"zscore", "ae"}
    assert a.n_slices == 55 and a.scan.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert 0 <= a.most_anomalous_slice() < a.n_slices
    idx = a.results["zscore"].most_anomalous_slice
    assert 28 <= idx <= 35  # the blob's slices
    grid, table, (img, ph) = cb.render_view(key, idx, "auto", 0.5, 1.0, "both", None)
    assert isinstance(grid, Image.Image) and grid.size[0] > 1000
    assert [r["method"] for r in table] == ["zscore", "ae"]
    for r in table:
        assert 0 <= r["percentile vs healthy"] <= 100 and r["decision"] in ("normal", "anomalous")
        res = a.results[r["method"]]  # the table shows the conditioned score and the raw top-1% mean
        assert r["score"] == pytest.approx(float(res.scores[idx]), rel=5e-3)  # 3 significant figures
        assert r["raw score (top 1% of map)"] == pytest.approx(float(res.raw_scores[idx]), rel=5e-3)
        assert len(str(abs(r["score"])).replace(".", "").lstrip("0")) <= 3
    assert img.shape == ph.shape
    # both halves of the compare slider on one scale: the model's normalised input beside its reconstruction
    norm = a.prepared.slice_to_original(a.prepared.images[idx], idx)
    assert np.array_equal(img, (np.clip(norm / 1.2, 0, 1) * 255).astype(np.uint8))
    zs = a.findings("zscore", 1.0)
    assert zs and any(28 <= f["centre slice"] <= 35 for f in zs)
    assert all(f["volume (mL)"] > 0 for f in zs)
    # the blob is 4 x 12 x 12 voxels of 2 mm: its finding's bounding box is given in mm
    blob = max((f for f in zs if 28 <= f["centre slice"] <= 35), key=lambda f: f["volume (mL)"])
    dims = [float(x) for x in blob["extent (mm)"].split(" x ")]
    assert len(dims) == 3 and all(d > 0 and d % 2 == 0 for d in dims) and dims[0] <= 16 and max(dims) <= 40
    fig = cb.score_curve_figure(a, idx)
    assert len(fig.axes[0].lines) >= 2
    leg = fig.axes[0].get_legend()  # below the axes, at a size a phone's half-width figure keeps legible
    assert leg is not None and leg.get_texts()[0].get_fontsize() >= 9 and leg.get_bbox_to_anchor().y0 < fig.axes[0].bbox.y0
    js = cb.api_summary(a)
    json.dumps(js)
    n_scored = int(np.sum(a.prepared.valid))  # the summary says how many slices are scored, and why not all
    assert 0 < n_scored < a.n_slices and f"{n_scored} of {a.n_slices} slices scored" in cb.scan_summary(a)
    assert js["study_key"].startswith("sk-") and js["methods"]["zscore"]["slice_percentiles"]
    zj = js["methods"]["zscore"]  # the scan-level figure with the most its calibration can tell
    assert zj["volume_percentile_ceiling"] is not None and 0 < zj["volume_percentile_ceiling"] <= 100
    assert zj["volume_percentile"] <= zj["volume_percentile_ceiling"] + 1e-9


def test_planes_and_cached_rerender(methods_root, lesion_volume):
    key, a = cb.load_and_analyse(str(lesion_volume), ["zscore"], "axial")
    key2, b = cb.reanalyse_plane(key, "coronal")
    assert b.plane == "coronal" and b.n_slices == a.scan.voxels.shape[1]
    g1, _, _ = cb.render_view(key2, 10, "brain", 0.3, 1.5, "contour", ["zscore"])
    g2, _, _ = cb.render_view(key2, 10, "brain", 0.3, 1.5, "contour", ["zscore"])
    assert np.array_equal(np.asarray(g1), np.asarray(g2))


def test_png_slice_and_dicom_series(methods_root):
    from anomaly.data.folder import read_image

    v = read_image(ROOT / "assets/templates/colin27_t1_brain_1mm.nii.gz")
    png = ROOT / "tests" / "_tmp_slice.png"
    Image.fromarray((v[90] / v[90].max() * 255).astype(np.uint8)).save(png)
    try:
        key, a = cb.load_and_analyse(str(png), ["zscore"], "axial")
        assert a.n_slices == 1 and not a.scan.known_frame
        grid, table, _ = cb.render_view(key, 0)
        assert table[0]["scored"]
        # an image file holds no pixel size: areas are counted in pixels and say so (not "mm²")
        assert "area above threshold (px)" in table[0] and not any("mm" in k for k in table[0])
        for f in a.findings("zscore", 0.5):
            assert "area (px)" in f and "extent (px)" in f and not any("cm²" in k or "mm" in k for k in f)
    finally:
        png.unlink()
    series = sorted((ROOT / "assets/dicom/brain_pd_series").glob("*.dcm"))
    key, a = cb.load_and_analyse([str(p) for p in series], ["zscore"], "axial")
    assert a.n_slices == 20
    assert not a.ood.in_distribution  # a proton-density series: not what the models learned
    assert "PD" in " ".join(a.ood.reasons) or "T1" in " ".join(a.ood.reasons) or "timing" in " ".join(a.ood.reasons)
    # out of distribution: every decision in the table carries the banner's warning
    assert all(r["decision"] == "no decision (not calibrated for this scan)" for r in a.score_table(10))
    assert "area above threshold (mm²)" in a.score_table(10)[0]  # a DICOM series carries its pixel size
    # a slice that is not scored has no score in the table (it had one, beside "not scored")
    off = [i for i in range(a.n_slices) if not a.prepared.valid[i]]
    for row in (a.score_table(off[0]) if off else []):
        assert row["decision"] == "not scored" and row["score"] is None and row["raw score (top 1% of map)"] is None
    # the series is tilted by 8 degrees: the summary says so (it was only in an unseen string)
    assert "acquired oblique (tilted 8 deg)" in cb.scan_summary(a)


def test_bad_inputs_give_typed_errors(methods_root, tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_text("this is not a DICOM file")
    with pytest.raises(AnomalyError):
        cb.load_and_analyse(str(bad), ["zscore"])
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    with pytest.raises(AnomalyError):
        cb.load_and_analyse(str(empty), ["zscore"])
    with pytest.raises(AnomalyError):
        cb.render_view("no-such-key", 0)
    from anomaly.errors import InvalidRequestError

    png = ROOT / "assets" / "examples" / "healthy_stripped_t1_axial.png"
    with pytest.raises(InvalidRequestError, match="plane must be one of axial, coronal, sagittal, got 'foo'"):
        cb.load_and_analyse(str(png), ["zscore"], "foo")


def test_preview_scores_one_slice_with_the_same_numbers_as_the_full_analysis(methods_root, lesion_volume):
    loaded = cb.load_upload([str(lesion_volume)])
    mid = cb.preview_slice(loaded[0], "axial")
    kp, p = cb.load_and_analyse(None, ["zscore", "ae"], "axial", loaded=loaded, only=[mid])
    kf, f = cb.load_and_analyse(None, ["zscore", "ae"], "axial", loaded=loaded)
    assert p.partial and not f.partial and p.n_slices == f.n_slices
    for m in ("zscore", "ae"):
        assert p.results[m].valid.sum() == 1 and p.results[m].valid[mid]
        assert p.results[m].scores[mid] == pytest.approx(f.results[m].scores[mid], rel=1e-5)
        assert np.allclose(p.results[m].anomaly_map[mid], f.results[m].anomaly_map[mid], atol=1e-6)
    grid, table, _ = cb.render_view(kp, mid, "auto", 0.5, 1.0, "both", None)
    assert isinstance(grid, Image.Image) and [r["method"] for r in table] == ["zscore", "ae"]
    assert cb.cached_analysis(loaded[0], ["zscore", "ae"], "axial") == (kf, f)


def test_upload_callback_shows_a_preview_then_the_whole_volume(methods_root, lesion_volume):
    from anomaly.ui.app import on_upload

    with cb._LOCK:  # earlier tests analysed this volume: start from an empty cache
        cb._CACHE.clear()
    outs = list(on_upload([str(lesion_volume)], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                          progress=lambda *a, **k: None))
    assert len(outs) == 2  # preview, then the full volume
    first, last = outs
    assert first[1]["value"] == 55 // 2 and first[1]["interactive"] is False
    assert "scored first" in first[3] and not first[2]["visible"]  # a progress note, not the red banner
    assert last[1]["interactive"] is True and last[1]["value"] == cb.get_analysis(last[0]).most_anomalous_slice()
    with pytest.raises(AnomalyError):
        cb.get_analysis(first[0])  # the preview was dropped once the full analysis was cached
    # the same scan again: served from the cache, no preview
    again = list(on_upload([str(lesion_volume)], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                           progress=lambda *a, **k: None))
    assert len(again) == 1 and again[0][0] == last[0]


def test_grid_rows_carry_each_methods_no_reconstruction_note(methods_root, lesion_volume, monkeypatch):
    """The pseudo-healthy panel of a method without reconstruction says what that method is
    (the consensus is an agreement map, not a feature-space method)."""
    from anomaly.methods.base import method_class, registered_methods

    assert "agreement" in method_class("consensus").no_reconstruction_note
    assert "feature-space" in method_class("feature").no_reconstruction_note
    assert all(method_class(n).no_reconstruction_note.strip() for n in registered_methods())
    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore", "ae"], "axial")
    rows = []
    monkeypatch.setattr(method_class("ae"), "no_reconstruction_note", "note of ae")
    monkeypatch.setattr("anomaly.analysis.compose_grid", lambda r, *args, **kw: rows.extend(r) or Image.new("RGB", (8, 8)))
    cb.render_view(key, 3, "auto", 0.5, 1.0, "both", None)
    notes = {r.name: r.empty_note for r in rows}
    assert notes["ae"] == "note of ae" and "feature-space" in notes["zscore"]


def test_pseudo_healthy_and_extra_maps_go_back_through_their_own_slices_crop(methods_root, lesion_volume, monkeypatch):
    """Each slice has its own crop box: a slice's pseudo-healthy and extra maps must be placed with
    that slice's box, exactly as the full-volume ``to_original`` places them (not with slice 0's)."""
    key, a = cb.load_and_analyse([str(lesion_volume)], ["ae", "zscore", "consensus"], "axial")
    p = a.prepared
    idx = 30
    assert not np.array_equal(p.boxes[idx], p.boxes[0])  # the case that went wrong
    ae, cons = a.results["ae"], a.results["consensus"]
    assert cons.extra_maps
    rows = []
    monkeypatch.setattr("anomaly.analysis.compose_grid", lambda r, *args, **kw: rows.extend(r) or Image.new("RGB", (8, 8)))
    _, _, (img, ph) = cb.render_view(key, idx, "auto", 0.5, 1.0, "both", None, compare_with="ae")
    # the grid draws it in the scan's intensities and window (the slice's normalisation undone) ...
    from anomaly.preprocess import background_level, intensity_scale
    from anomaly.windowing import apply_window

    bg = background_level(a.scan.voxels)
    scale = intensity_scale(a.scan.slice(idx), p.original_masks[idx], bg)
    grid_ph = apply_window(p.to_original(ae.pseudo_healthy)[idx] * scale + bg, *a.window("auto"))
    by_name = {r.name: r for r in rows}
    assert np.array_equal(by_name["ae"].pseudo_healthy_u8, grid_ph)
    # ... and the compare slider in the model's scale, beside the model's input
    want_ph = (np.clip(p.to_original(ae.pseudo_healthy)[idx] / 1.2, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(ph, want_ph)
    # the reconstruction covers the brain where the input has it (not a shrunken copy at slice 0's box)
    brain = p.original_masks[idx]
    assert (want_ph[brain] > 0).mean() > 0.95 and (grid_ph[brain] > 0).mean() > 0.95
    for extra, emap in cons.extra_maps.items():
        # votes are on a fixed scale (the share of members, 1.0 = all); other extra maps per scan
        fixed = extra in type(cb.get_method("consensus")).extra_map_scales
        ref = 1.0 if fixed else float(np.percentile(emap[np.asarray(p.masks)], 99.5))
        want = p.to_original(emap / max(ref, 1e-8))[idx]
        assert np.allclose(by_name[f"consensus · {extra}"].cal_map, want)
        if fixed:
            assert "1.0 = all of them" in by_name[f"consensus · {extra}"].caption
    one = p.slice_to_original(ae.pseudo_healthy[idx], idx)
    assert np.array_equal(one, p.to_original(ae.pseudo_healthy)[idx])


def test_the_opening_slice_is_chosen_among_large_brain_sections(methods_root, lesion_volume):
    """The viewer opens on the highest mean percentile among slices with a large brain section:
    skull-base and vertex slices (small sections) would otherwise win on most scans."""
    from anomaly.analysis import OPENING_MIN_SECTION

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore", "ae"], "axial")
    area = a.prepared.original_masks.reshape(a.n_slices, -1).sum(1)
    cand = a.opening_candidates()
    valid = np.asarray(a.prepared.valid, bool)
    assert cand.any() and not cand[valid & (area < OPENING_MIN_SECTION * area[valid].max())].any()
    assert (~cand & valid).any()  # some scored slices (the smallest sections) are left out
    top = a.most_anomalous_slice()
    assert cand[top]
    _, z = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    assert 28 <= z.most_anomalous_slice() <= 35  # the blob's slices
    # ties at the 100th percentile are broken by the mean score, not by the lowest slice index
    for r in a.results.values():
        r.percentiles[:] = 100.0
    s = np.mean([r.scores for r in a.results.values()], axis=0)
    assert a.most_anomalous_slice() == int(np.argmax(np.where(cand, s, -np.inf)))


def test_a_refused_upload_clears_the_viewer_so_flags_cannot_go_to_the_previous_scan(methods_root, lesion_volume,
                                                                                   tmp_path):
    """The page's upload: a bad file after a good one leaves no scan key behind (the API keeps raising)."""
    import gradio as gr

    from anomaly.ui.app import on_upload, on_upload_page

    good = list(on_upload_page([str(lesion_volume)], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                               progress=lambda *a, **k: None))
    assert good[-1][0] is not None
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"\x1f\x8b not a nifti at all")
    outs = list(on_upload_page([str(bad)], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                               progress=lambda *a, **k: None))
    assert len(outs) == 1
    key, slider, banner, summary, curve, grid, table, findings, compare, _, plane, centre = outs[0]
    assert key is None and grid is None and slider["interactive"] is False
    assert table.empty and list(table.columns) == ["method", "decision", "percentile vs healthy"]  # headers, no "1 2 3"
    assert banner["visible"] and banner["value"].startswith("**Not loaded:**")
    from anomaly.annotations import service as svc

    with pytest.raises(AnomalyError):  # what Add flag does with the session's key now: refused
        svc._analysis(key)
    with pytest.raises(gr.Error):
        list(on_upload([str(bad)], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both", progress=lambda *a, **k: None))


def test_a_slice_that_was_not_scored_gets_no_percentile_and_no_decision(methods_root, tmp_path):
    from anomaly.data.folder import read_image, write_image

    v = read_image(ROOT / "assets/templates/mni152_2009a_t1_1mm.nii.gz")[::3, ::2, ::2].copy()  # skull base to top
    _, a = cb.load_and_analyse([str(write_image(tmp_path, "whole", v, spacing=(3.0, 2.0, 2.0)))], ["zscore"], "axial")
    valid = np.asarray(a.prepared.valid, bool)
    assert (~valid).any() and valid.any()
    i = int(np.nonzero(~valid)[0][0])
    row = a.score_table(i)[0]
    assert row["decision"] == "not scored" and row["percentile vs healthy"] is None and row["scored"] is False
    j = int(np.nonzero(valid)[0][0])
    assert a.score_table(j)[0]["decision"] in ("normal", "anomalous")
    api = cb.api_summary(a, i, 1.0)
    assert api["methods"]["zscore"]["slice_percentiles"][i] is None
    assert api["methods"]["zscore"]["slice_percentiles"][j] is not None


def test_thick_slices_keep_their_shape_in_the_compare_slider(methods_root, tmp_path):
    """Coronal view of a 6 mm-slice volume: the compare pair is stretched like the main grid."""
    from anomaly.data.folder import read_image, write_image

    v = read_image(ROOT / "assets/templates/mni152_2009a_t1_1mm.nii.gz")[40:150:6, ::2, ::2].copy()
    p = write_image(tmp_path, "thick", v, spacing=(6.0, 2.0, 2.0))
    key, a = cb.load_and_analyse([str(p)], ["zscore"], "coronal")
    i = a.n_slices // 2
    _, _, (inp, ph) = cb.render_view(key, i)
    # the models learned axial slices: a coronal decision says so
    assert all(r["decision"].endswith("(axial-trained models)") for r in a.score_table(i) if r["scored"])
    raw = a.display_u8(i)
    assert raw.shape[0] < raw.shape[1] / 3  # 19 rows of 6 mm under ~109 columns of 2 mm
    assert inp.shape[1] == raw.shape[1] and inp.shape[0] == round(raw.shape[0] * 3.0) and ph.shape == inp.shape


@pytest.fixture(scope="module")
def thick_coronal(methods_root, tmp_path_factory):
    """A 6 mm-slice MNI152 volume viewed coronally: rows 3x taller than columns (pixel aspect 3)."""
    from anomaly.data.folder import read_image, write_image

    v = read_image(ROOT / "assets/templates/mni152_2009a_t1_1mm.nii.gz")[40:150:6, ::2, ::2].copy()
    p = write_image(tmp_path_factory.mktemp("thick"), "thick", v, spacing=(6.0, 2.0, 2.0))
    key, a = cb.load_and_analyse([str(p)], ["zscore"], "coronal")
    assert a.pixel_aspect() == pytest.approx(3.0)
    return key, a


def test_annotate_preview_keeps_thick_slices_proportions_and_maps_clicks_back(thick_coronal):
    """The Annotate preview stretches rows like the grid, and a click lands on the pixel under it."""
    import gradio as gr

    from anomaly.annotations import service as svc
    from anomaly.ui.annotate import on_preview_click

    key, a = thick_coronal
    i = a.n_slices // 2
    h, w = a.display_u8(i).shape
    kr, kc = svc.preview_scale((h, w), a.pixel_aspect())
    assert kr == pytest.approx(3 * kc) and kc == int(kc)
    img = svc.preview(key, i)
    assert img.shape == (round(h * kr), w * int(kc), 3)
    # a click at display (x, y) is the slice pixel (y // kr, x // kc); corner 0 -> 1 in box mode
    row, col = h // 2, w // 3
    evt = gr.SelectData(None, {"index": [int(col * kc + kc - 1), int(row * kr + kr - 1)], "value": None})
    out = on_preview_click(key, i, "box", 0, "", "", "", "", evt)
    assert out[:2] == [row, col] and out[-1] == 1
    # the first corner is drawn (cyan cross) before the second click
    first = svc.preview(key, i, None, 1.0, "box", [row, col, "", ""])
    assert not np.array_equal(first, img)
    assert (first[int(row * kr + kr / 2), int(col * kc + kc / 2)] == (0, 255, 255)).all()
    out = on_preview_click(key, i, "component", 0, "", "", "", "", evt)
    assert out[4:6] == [row, col]
    # a click on the last display pixel stays inside the slice
    evt = gr.SelectData(None, {"index": [int(w * kc) - 1, round(h * kr) - 1], "value": None})
    assert on_preview_click(key, i, "component", 0, "", "", "", "", evt)[4:6] == [h - 1, w - 1]


def test_preview_scale_square_and_thick_pixels():
    from anomaly.annotations.service import preview_pixel, preview_scale

    assert preview_scale((128, 128)) == (3, 3)
    assert preview_scale((19, 109), 3.0) == (9, 3)  # 57 x 109 mm-ish, up-scaled 3x, rows 3x taller
    assert preview_scale((109, 19), 1 / 3.0) == pytest.approx((3, 9))
    assert preview_scale((1, 1)) == (6, 6)
    assert preview_scale((4000, 10)) == (1, 1)
    assert preview_scale((64, 64), float("nan")) == preview_scale((64, 64))
    # mildly non-square pixels keep their proportion too (not rounded to a whole factor)
    fr, fc = preview_scale((256, 256), 1.4)
    assert (fr, fc) == pytest.approx((1.4, 1.0))
    assert preview_pixel(round(256 * fr) - 1, 255, (256, 256), 1.4) == (255, 255)
    assert preview_pixel(14.1, 3, (256, 256), 1.4) == (10, 3) and preview_pixel(13.9, 3, (256, 256), 1.4) == (9, 3)
    assert preview_pixel(-5, 10_000, (256, 256), 1.4) == (0, 255)


def test_on_demand_method_runs_on_the_slice_in_view(thick_coronal, methods_root, tiny_dataset, tmp_path_factory,
                                                    monkeypatch):
    """The diffusion button's callback end to end: a tiny AnoDDPM trained here, run on the slice in
    view of a thick-slice coronal plane, seeded (same map twice), drawn with the plane's pixel aspect."""
    import shutil

    import anomaly.methods.base as base
    import anomaly.render as render
    from anomaly.methods.anoddpm import method as am
    from anomaly.train import train
    from anomaly.training import TrainConfig

    root = tmp_path_factory.mktemp("od_ckpt")
    shutil.copytree(methods_root / "zscore", root / "zscore")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(am.DEFAULT_INFERENCE, "n_steps", 2)
        train("anoddpm", tiny_dataset, root / "anoddpm", TrainConfig(seed=0, max_steps=3, batch_size=4))
    monkeypatch.setattr(base, "CHECKPOINT_ROOT", root)
    base.clear_cache()
    try:
        assert cb.on_demand_methods() == ["anoddpm"]
        assert "anoddpm" not in [v for _, v in cb.method_choices()]  # it has its own panel, not a checkbox
        key, a = thick_coronal
        aspects = []
        real = render.compose_grid
        names = []
        # the grid of a scan is framed in one place, Analysis.grid, which calls compose_grid from anomaly.analysis
        monkeypatch.setattr("anomaly.analysis.compose_grid", lambda *x, **k: aspects.append(k.get("aspect"))
                            or names.append([r.name for r in x[0]]) or real(*x, **k))
        i = a.n_slices // 2
        grid, row = cb.run_on_demand(key, i, "anoddpm", seed=0)
        grid2, row2 = cb.run_on_demand(key, i, "anoddpm", seed=0)
        assert isinstance(grid, Image.Image) and grid.size[0] > 300
        assert row["method"] == "anoddpm" and row["slice"] == i and np.isfinite(row["score"])
        assert row["percentile vs healthy"] is None or 0 <= row["percentile vs healthy"] <= 100
        assert row2["score"] == row["score"] and np.array_equal(np.asarray(grid), np.asarray(grid2))
        assert aspects == [pytest.approx(3.0)] * 2
        assert names[0] == ["anoddpm", "anoddpm · uncertainty (draw spread)"]  # the spread is called uncertainty
        assert cb.run_on_demand(key, 10_000, "anoddpm")[1]["slice"] == a.n_slices - 1  # clipped into the scan
        zoomed, row3 = cb.run_on_demand(key, i, "anoddpm", seed=0, zoom=2.0, zoom_centre=[5, 5])  # the viewer's zoom
        assert row3["score"] == row["score"] and zoomed.size == grid.size
        # the viewer's overlay settings change while a result is shown: it is redrawn with them (same
        # slice, same map); an empty panel stays empty (nothing runs unasked)
        from anomaly.ui.app import redraw_on_demand

        g_thr, r_thr = redraw_on_demand(row, key, 0, "anoddpm", "auto", 2.0, 0.5, "fill")
        assert r_thr["slice"] == i and r_thr["score"] == row["score"]
        assert np.asarray(g_thr).tobytes() != np.asarray(grid).tobytes()  # drawn at threshold 2, fill
        assert np.array_equal(np.asarray(g_thr), np.asarray(cb.run_on_demand(key, i, "anoddpm", "auto", 2.0, 0.5, "fill")[0]))
        untouched = redraw_on_demand(None, key, i, "anoddpm", "auto", 2.0, 0.5, "fill")
        assert all(u.get("__type__") == "update" and "value" not in u for u in untouched)
        assert np.asarray(zoomed).tobytes() != np.asarray(grid).tobytes()
    finally:
        base.clear_cache()


def test_a_new_scan_or_slice_clears_the_on_demand_panel(methods_root):
    """Wiring: the change events of the scan key and of the slice (moved, a finding, a new scan)
    empty both on-demand outputs: a result of one slice is not left beside another."""
    from anomaly.ui.app import build_app, clear_on_demand

    cfg = build_app().config
    comps = {c["id"]: c for c in cfg["components"]}
    deps = [d for d in cfg["dependencies"] if d.get("api_name", "").startswith("clear_on_demand")]
    assert len(deps) == 2
    targets = {comps[t]["type"]: (t, e) for d in deps for t, e in d["targets"]}
    assert {e for _, e in targets.values()} == {"change"} and set(targets) == {"state", "slider"}
    run = [d for d in cfg["dependencies"] if d.get("api_name") == "run_on_demand"][0]
    for t, _ in targets.values():
        assert t in run["inputs"]  # the same key and slice the button runs on
    # the button waits for a scan: disabled on the page until the key is set
    button = comps[run["targets"][0][0]]
    assert button["props"]["interactive"] is False
    redraws = [d for d in cfg["dependencies"] if str(d.get("api_name")).startswith("redraw_on_demand")]
    assert len(redraws) == 5 and all(sorted(d["outputs"]) == sorted(run["outputs"]) for d in redraws)
    for d in deps:
        assert sorted(d["outputs"]) == sorted(run["outputs"])
    assert clear_on_demand() == (None, None)


def test_methods_panel_shows_each_cards_validation_figures(methods_root, tmp_path, monkeypatch):
    """The "Methods and citations" panel: paper, the card's own val_lesion figures, where it was trained;
    a card without figures or with a broken file still gives a row."""
    import anomaly.methods.base as base
    from anomaly.checkpoints import load_card

    md = cb.citations_markdown()
    for name in ("zscore", "ae", "consensus"):
        v = load_card(methods_root / name)["validation"]
        assert f"{v['val_lesion_image_auroc']:.2f} / {v['val_lesion_pixel_ap']:.3f}" in md, name
    assert "synthetic" in md and "Kascenas" not in md  # only methods with a checkpoint here
    ae_steps = load_card(methods_root / "ae")["train_steps"]
    assert f"{ae_steps:,} steps" in md
    import shutil

    root = tmp_path / "ck"
    shutil.copytree(methods_root / "ae", root / "ae")
    shutil.copytree(methods_root / "zscore", root / "zscore")
    card = json.loads((root / "ae" / "card.json").read_text())
    card.pop("validation")
    (root / "ae" / "card.json").write_text(json.dumps(card))
    monkeypatch.setattr(base, "CHECKPOINT_ROOT", root)
    rows = {r.split("|")[1].strip(): r for r in cb.citations_markdown().splitlines() if r.startswith("| `")}
    assert set(rows) == {"`ae`", "`zscore`"} and "not measured" in rows["`ae`"]
    (root / "zscore" / "card.json").write_text("{not json")
    # a card that stopped being JSON: the method is still listed (its use fails elsewhere, with its own message)
    assert "`zscore`" in cb.citations_markdown()


def test_a_2d_image_keeps_its_one_plane(methods_root, monkeypatch):
    """A PNG with the plane radio on coronal is shown as it is (with a note), not cut into 1-pixel
    rows; switching the plane of a 2D image keeps it; switching before any scan does nothing."""
    import gradio as gr

    from anomaly.ui.app import on_plane, on_upload_page

    png = ROOT / "assets" / "examples" / "healthy_stripped_t1_axial.png"
    outs = list(on_upload_page([str(png)], None, "coronal", ["zscore"], "auto", 0.5, 1.0, "both",
                               progress=lambda *a, **k: None))
    key, slider, banner, summary, curve, grid, table, *_, plane, centre = outs[-1]
    assert key is not None and grid is not None
    assert plane["value"] == "axial"  # the radio is set back to the one plane a 2D image has
    assert "A 2D image has one plane" in summary and "not coronal" in summary and not banner["visible"]
    a = cb.get_analysis(key)
    assert a.plane == "axial" and a.n_slices == 1
    infos = []
    monkeypatch.setattr(gr, "Info", lambda msg, *x, **k: infos.append(msg))
    out = list(on_plane(key, "sagittal", "auto", 0.5, 1.0, "both", ["zscore"], progress=lambda *x, **k: None))
    assert len(out) == 1  # nothing to preview: a 2D image stays in its plane
    out = out[0]
    assert out[0] == key and cb.get_analysis(out[0]).plane == "axial" and out[3] is not None
    assert out[-2]["value"] == "axial"  # the radio too
    assert infos and "one plane" in infos[0]
    nothing = list(on_plane(None, "coronal", "auto", 0.5, 1.0, "both", ["zscore"], progress=lambda *x, **k: None))
    assert len(nothing) == 1 and len(nothing[0]) == 10 and all(u == gr.update() for u in nothing[0])
    with pytest.raises(gr.Error):  # an expired key is still an error
        list(on_plane("expired-key", "coronal", "auto", 0.5, 1.0, "both", ["zscore"], progress=lambda *x, **k: None))


def test_a_new_plane_shows_its_middle_slice_first_then_comes_from_the_cache(methods_root, lesion_volume):
    """Switching a volume to coronal: a preview of the middle coronal slice (slider locked), then the
    whole plane; switching back to axial and to coronal again is served from the cache at once."""
    from anomaly.ui.app import on_plane

    with cb._LOCK:
        cb._CACHE.clear()
    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    run = lambda k, pl: list(on_plane(k, pl, "auto", 0.5, 1.0, "both", ["zscore"],  # noqa: E731
                                      progress=lambda *x, **kw: None))
    outs = run(key, "coronal")
    assert len(outs) == 2
    first, last = outs
    mid = cb.preview_slice(a.scan, "coronal")
    assert first[1]["value"] == mid and first[1]["interactive"] is False and "scored first" in first[7]
    full = cb.get_analysis(last[0])
    assert full.plane == "coronal" and not full.partial and last[1]["interactive"] is True
    with pytest.raises(AnomalyError):
        cb.get_analysis(first[0])  # the preview is dropped once the whole plane is scored
    # the preview's numbers are the full analysis's at that slice
    p_row = [r for r in first[4].to_dict("records") if r["method"] == "zscore"][0]
    assert p_row["score"] == pytest.approx(float(full.results["zscore"].scores[mid]), rel=5e-3)
    back = run(last[0], "axial")
    assert len(back) == 1 and back[0][0] == key  # the axial analysis, from the cache
    again = run(key, "coronal")
    assert len(again) == 1 and again[0][0] == last[0]


def test_app_help_and_port_options(capsys):
    """`python app.py --help` prints its options and serves nothing; --host/--port are parsed."""
    from anomaly.ui import app as ui_app

    with pytest.raises(SystemExit) as e:
        ui_app.launch(["--help"])
    assert e.value.code == 0 and "--port" in capsys.readouterr().out
    seen = {}

    class FakeBlocks:
        def queue(self, **k):
            return self

        def launch(self, **k):
            seen.update(k)

    import unittest.mock as mock

    with mock.patch.object(ui_app, "build_app", lambda: FakeBlocks()):
        ui_app.launch(["--host", "0.0.0.0", "--port", "8123"])
    assert seen["server_name"] == "0.0.0.0" and seen["server_port"] == 8123
    with pytest.raises(SystemExit) as e:
        ui_app.launch(["--port", "not-a-port"])
    assert e.value.code == 2


def test_findings_of_all_methods_in_one_list_say_which_others_agree(methods_root, lesion_volume):
    """The findings table: every shown method's regions, strongest first on the one calibrated scale,
    each naming the other methods whose maps flag part of it."""
    from scipy import ndimage

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore", "ae", "consensus"], "axial")
    rows = cb.findings_rows(key, 1.0, ["zscore", "ae", "consensus"])
    assert {r["method"] for r in rows} >= {"zscore"} and len(rows) > 1
    # large brain sections first (the skull base and vertex after); in each group method by method,
    # in the Methods' order (best validation pixel AP first: validation_rank), each strongest first
    large = a.opening_candidates()
    assert all(r["brain section"] == ("large" if large[r["centre slice"]] else "small (skull base, vertex or edge)")
               for r in rows)
    order = sorted(["zscore", "ae", "consensus"], key=cb.validation_rank)
    key_of = [(r["brain section"] != "large", order.index(r["method"]), -r["peak (x threshold)"]) for r in rows]
    assert key_of == sorted(key_of) and any(not k[0] for k in key_of)
    assert cb.findings_rows(key, 1.0, list(reversed(order))) == rows  # the ticked order does not matter
    from anomaly.analysis import _without_small

    # "also flagged by" lists them in that order, each where it has a finding (10 voxels or more) itself
    regions = {m: _without_small(a._regions(m, 1.0), 10) for m in order}
    ml = a.pixel_area_mm2() * a.scan.spacing[0] / 1000.0
    for method in ("zscore", "ae"):  # each finding's agreement, recomputed from the regions
        lab, n = ndimage.label(regions[method])
        want = sorted((round(float((lab == k).sum() * ml), 3),
                       ", ".join(o for o in regions if o != method and (regions[o] & (lab == k)).any()) or "none")
                      for k in range(1, n + 1) if (lab == k).sum() >= 10)
        got = sorted((r["volume (mL)"], r["also flagged by"]) for r in rows if r["method"] == method)
        assert got == want
    # the blob (slices 30-33) is found by zscore, and the consensus of zscore and ae flags it too
    blob = [r for r in rows if r["method"] == "zscore" and 28 <= r["centre slice"] <= 35]
    assert blob and "consensus" in max(blob, key=lambda r: r["volume (mL)"])["also flagged by"]
    # one method shown: nobody else to agree
    assert all(r["also flagged by"] == "none" for r in cb.findings_rows(key, 1.0, ["zscore"]))
    assert cb.api_summary(a)["findings"][0]["also flagged by"]


def test_extra_rows_toggle_compare_choice_and_typed_window(methods_root, lesion_volume):
    from anomaly.errors import InvalidRequestError
    from anomaly.ui import app as ui

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore", "ae", "consensus"], "axial")
    assert a.results["consensus"].extra_maps  # its votes: a row of its own
    i = 31
    with_extra, _, _ = cb.render_view(key, i, "auto", 0.5, 1.0, "both", None, True)
    without, _, _ = cb.render_view(key, i, "auto", 0.5, 1.0, "both", None, False)
    assert without.size[1] < with_extra.size[1] and without.size[0] == with_extra.size[0]
    per_row = without.size[1] // 3
    assert with_extra.size[1] == pytest.approx(per_row * (3 + len(a.results["consensus"].extra_maps)), abs=8)
    # the compare slider shows the chosen method's pseudo-healthy, and its caption says whose
    _, _, (inp_z, ph_z) = cb.render_view(key, i, compare_with="zscore")
    _, _, (inp_a, ph_a) = cb.render_view(key, i, compare_with="ae")
    assert not np.array_equal(ph_z, ph_a) and np.array_equal(inp_z, inp_a)
    assert "ae's pseudo-healthy" in cb.compare_label(a, None, "ae")
    assert cb.compare_source(a, None, cb.AUTO_COMPARE) == "zscore"  # the first shown with one
    assert cb.compare_source(a, ["consensus", "ae"], None) == "ae"
    lab = cb.compare_label(a, None, "consensus")  # the consensus has no reconstruction: falls back, says so
    assert "zscore's pseudo-healthy" in lab and "consensus has no reconstruction" in lab
    out = ui.on_view(key, i, "auto", 0.5, 1.0, "both", None, False, "ae")
    assert out[2]["label"] == cb.compare_label(a, None, "ae") and out[0].size == without.size
    # a typed window (level, width) is used as given; a nonsense one is a typed error
    typed, _, _ = cb.render_view(key, i, "L 0.3 W 0.2", extra_rows=False)
    auto, _, _ = cb.render_view(key, i, "auto", extra_rows=False)
    assert np.asarray(typed).tobytes() != np.asarray(auto).tobytes()
    img = a.scan.slice(i)
    assert np.array_equal(a.display_u8(i, "L0.3 W0.2"), np.clip(np.rint((img - 0.2) / 0.2 * 255), 0, 255).astype(np.uint8))
    with pytest.raises(InvalidRequestError, match="width must be a positive"):
        cb.render_view(key, i, "L40 W0")
    with pytest.raises(InvalidRequestError, match="e.g. L40 W80"):
        cb.render_view(key, i, "bright please")
    with pytest.raises(InvalidRequestError, match="both a level and a width"):
        cb.render_view(key, i, "L0.4")
    # on the page, a window it cannot read warns and draws with 'auto' (no error badges on every output)
    import gradio as gr

    warned = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gr, "Warning", lambda msg, *x, **k: warned.append(msg))
        out = ui.on_view(key, i, "bright", 0.5, 1.0, "both", None, False)
    assert warned and "unknown window 'bright'" in warned[0] and "(brain, subdural" in warned[0] and "auto window" in warned[0]
    same, _, _ = cb.render_view(key, i, "auto", 0.5, 1.0, "both", None, False)
    assert np.asarray(out[0]).tobytes() == np.asarray(same).tobytes()
    # a method picked for the compare slider but then unticked: the first shown one, and the caption says why
    assert cb.compare_source(a, ["zscore", "consensus"], "ae") == "zscore"
    assert "(ae is not shown)" in cb.compare_label(a, ["zscore", "consensus"], "ae")
    # the score curve draws the shown methods only; a one-slice image gets one tick, not a -0.04..0.04 axis
    assert [ln.get_label() for ln in cb.score_curve_figure(a, i, ["ae"]).axes[0].lines][0] == "ae"
    labels = [ln.get_label() for ln in cb.score_curve_figure(a, i, ["ae"]).axes[0].lines]
    assert [x for x in labels if x not in ("95th (decision)", "slice in view")] == ["ae"] and "slice in view" in labels


def test_the_input_panel_shows_its_window(methods_root, lesion_volume):
    """The window in force is printed on the input panel ("L.. W.."), so a reader knows what to type."""
    from anomaly.windowing import window_text

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    assert window_text(40, 80) == "L40 W80" and window_text(-600, 1500) == "L-600 W1500"
    assert window_text(29490.4, 58990.6) == "L29490 W58991" and window_text(0.3, 0.2) == "L0.3 W0.2"
    assert window_text(*a.window("L0.3 W0.2")) == "L0.3 W0.2"
    c, w = a.window("auto")
    assert np.array_equal(a.display_u8(31), np.clip(np.rint((a.scan.slice(31) - (c - w / 2)) / w * 255), 0, 255).astype(np.uint8))
    seen = []
    import anomaly.analysis as an

    real = an.compose_grid
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(an, "compose_grid", lambda *x, **k: seen.append(k.get("window_label")) or real(*x, **k))
        cb.render_view(key, 31, "L0.3 W0.2")
        cb.render_view(key, 31, "auto")
    assert seen == ["L0.3 W0.2", window_text(c, w)]


def test_every_panel_carries_orientation_letters_and_the_input_its_position(methods_root, lesion_volume):
    from anomaly.render import PANEL

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    grid, _, _ = cb.render_view(key, 31, "auto", 0.0, 99.0, "fill", None)  # no overlay drawn
    px = np.asarray(grid)
    for c in range(4):  # input, pseudo-healthy, map, overlay: yellow letters in each panel
        panel = px[20:20 + PANEL, c * PANEL:(c + 1) * PANEL]
        assert ((panel[..., 0] > 240) & (panel[..., 1] > 240) & (panel[..., 2] < 40)).sum() > 10, c
    assert a.scan.slice_label(31).startswith(("S ", "I ")) and cb.api_summary(a, 31)["slice_position"] == a.scan.slice_label(31)


def test_zoom_is_synchronised_across_panels_and_clicks_map_back(methods_root, lesion_volume):
    """Zoom shows the same window of the slice in every panel and in the compare pair; a click on
    any panel of the zoomed grid names the slice pixel under it."""
    from anomaly.render import PANEL, panel_pixel, zoom_window

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore", "ae"], "axial")
    i, shape = 31, a.scan.slice(31).shape
    assert zoom_window(shape, 1.0) == (0, shape[0], 0, shape[1])
    r0, r1, c0, c1 = zoom_window(shape, 2.0, (0, 0))  # shifted inside the slice, not shrunk
    assert (r0, c0) == (0, 0) and r1 == round(shape[0] / 2) and c1 == round(shape[1] / 2)
    centre = (60, 45)
    grid, _, (inp, ph) = cb.render_view(key, i, "auto", 0.0, 99.0, "fill", None, True, None, 2.0, [60, 45])
    r0, r1, c0, c1 = zoom_window(shape, 2.0, centre)
    full = a.display_u8(i)
    _, _, (inp_full, _) = cb.render_view(key, i, "auto", 0.0, 99.0, "fill", None)
    assert inp.shape == (r1 - r0, c1 - c0) and np.array_equal(inp, inp_full[r0:r1, c0:c1]) and ph.shape == inp.shape
    # the input panel and the overlay panel (no overlay drawn) show the same zoomed picture
    px = np.asarray(grid)[20 + 20:20 + PANEL - 20, :].astype(int)
    assert np.abs(px[:, 40:PANEL - 40] - px[:, 3 * PANEL + 40:4 * PANEL - 40]).mean() < 1.0
    # a click anywhere maps back to the slice, the same pixel from every panel and every row
    for col in range(4):
        for row in range(2):
            y = row * (PANEL + 22) + 20 + PANEL // 2
            got = panel_pixel(col * PANEL + PANEL // 2, y, shape, a.pixel_aspect(), 2.0, centre)
            assert got == cb.clicked_pixel(key, col * PANEL + PANEL // 2, y, 2.0, [60, 45])
            assert abs(got[0] - (r0 + r1) / 2) <= 1 and abs(got[1] - (c0 + c1) / 2) <= 1
    assert panel_pixel(4 * PANEL + 5, 100, shape) is None  # the colour bar
    assert panel_pixel(100, 5, shape) is None  # a row's caption
    assert full.shape == shape


def test_clicking_a_finding_jumps_to_it_and_centres_the_zoom(methods_root, lesion_volume):
    import pandas as pd
    from anomaly.ui import app as ui

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    df = pd.DataFrame(cb.findings_rows(key, 1.0, ["zscore"]))

    class Evt:
        index = [0, 2]

    slider, centre = ui.on_finding(df, Evt())
    assert slider["value"] == int(df.iloc[0]["centre slice"])
    assert centre == [float(v) for v in df.iloc[0]["centre (row, col)"].split(",")]

    class Click:
        index = [300, 150]  # on the pseudo-healthy panel of the first row

    assert ui.on_grid_click(key, 1.0, None, Click()) == list(cb.clicked_pixel(key, 300, 150))
    # a new scan: the upload's outputs set the zoom centre back to none (the last output)
    outs = list(ui.on_upload([str(lesion_volume)], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                             progress=lambda *x, **k: None))
    assert outs[-1][-1] is None


def test_a_plane_switch_keeps_the_point_in_view(methods_root, lesion_volume):
    """Zoomed on the blob in axial, a switch to coronal opens the coronal slice through the blob with
    the zoom centred on it, and back to axial returns to the same axial slice and point."""
    from anomaly.scan import plane_point_to_voxel
    from anomaly.ui import app as ui

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    blob = [31, 56, 46]  # axial slice 31, the blob's middle (rows 50-61, columns 40-51)
    j, (r, c) = cb.same_point_in(key, 31, blob[1:], "coronal")
    assert j == 56 and c == 46 and r == a.scan.shape[0] - 1 - 31
    assert plane_point_to_voxel("coronal", j, r, c, a.scan.shape) == (31.0, 56.0, 46.0)
    j2, (r2, c2) = cb.same_point_in(key, 31, blob[1:], "sagittal")
    assert (j2, r2, c2) == (46, a.scan.shape[0] - 1 - 31, 56.0)
    run = lambda k, pl, i, centre: list(ui.on_plane(k, pl, "auto", 0.5, 1.0, "both", ["zscore"], True, None, 2.0,  # noqa: E731
                                                     i, centre, progress=lambda *x, **kw: None))
    out = run(key, "coronal", 31, blob[1:])[-1]
    kc = out[0]
    assert cb.get_analysis(kc).plane == "coronal" and out[1]["value"] == 56 and out[-1] == [r, c]
    back = run(kc, "axial", out[1]["value"], out[-1])[-1]
    assert cb.get_analysis(back[0]).plane == "axial" and back[1]["value"] == 31 and back[-1] == [56.0, 46.0]
    # no zoom centre: the middle of the slice in view is the point kept
    mid = cb.same_point_in(key, 31, None, "coronal")
    h, w = a.scan.slice(31).shape
    assert mid == (round((h - 1) / 2), [float(a.scan.shape[0] - 1 - 31), (w - 1) / 2])
    # ... unless a shown method flags something there: its strongest point (the blob) is kept, so the
    # coronal slice opened after the jump to the lesion passes through it
    j3, (r3, c3) = cb.same_point_in(key, 31, None, "coronal", ["zscore"])
    assert 50 <= j3 <= 61 and 40 <= c3 <= 51 and r3 == a.scan.shape[0] - 1 - 31
    out3 = run(key, "coronal", 31, None)[-1]
    assert 50 <= out3[1]["value"] <= 61
    # a slice no shown method flags: the middle again
    quiet = next(i for i in range(a.n_slices) if cb.strongest_point(a, i, ["zscore"]) is None)
    assert cb.same_point_in(key, quiet, None, "coronal", ["zscore"])[0] == round((h - 1) / 2)


def test_reader_safeguards_ct_windows_method_order_and_non_axial_decisions(methods_root, lesion_volume, tmp_path,
                                                                          monkeypatch):
    """A CT window on MR warns and draws 'auto'; the methods are listed best validation pixel AP
    first; coronal slices get maps but no decision, and their grid captions say why."""
    import json
    import shutil

    import anomaly.methods.base as base

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    assert a.scan.modality != "CT"
    drawn, msg = cb.usable_window("brain", key)
    assert drawn == "auto" and "Hounsfield" in msg and "auto window" in msg
    assert cb.usable_window("L40 W80", key) == ("L40 W80", None) and cb.usable_window("brain") == ("brain", None)
    # 'file' on a NIfTI (no stored window) says it draws 'auto'; on a DICOM series with one it is used
    drawn, msg = cb.usable_window("file", key)
    assert drawn == "auto" and "stores no display window" in msg
    a.scan.window = (40.0, 80.0)  # as a DICOM file with WindowCenter/Width has
    try:
        assert cb.usable_window("file", key) == ("file", None)
    finally:
        a.scan.window = None
    # order: by each card's val_lesion pixel AP, best first; a card without one goes last
    root = tmp_path / "ckpt"
    shutil.copytree(methods_root, root)
    for name, ap in (("zscore", 0.01), ("ae", 0.2)):
        card_path = root / name / "card.json"
        card = json.loads(card_path.read_text())
        card["validation"] = {**(card.get("validation") or {}), "val_lesion_pixel_ap": ap}
        card_path.write_text(json.dumps(card))
    monkeypatch.setattr(base, "CHECKPOINT_ROOT", root)
    base.clear_cache()
    try:
        order = cb.default_methods()
        assert order.index("ae") < order.index("zscore")
        assert cb.validation_rank("ae") == (-0.2, "ae")
    finally:
        monkeypatch.setattr(base, "CHECKPOINT_ROOT", methods_root)
        base.clear_cache()
    kc, c = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "coronal")
    j = c.most_anomalous_slice()
    want = "axial-trained models" if c.ood.in_distribution else "not calibrated for this scan"
    assert all(r["decision"] == f"no decision ({want})" for r in c.score_table(j) if r["scored"])
    assert c.calibration_caveat() == f" ({want})" and a.calibration_caveat() == ""
    was = c.ood.in_distribution
    c.ood.in_distribution = True  # an in-distribution coronal view: the plane is the reason
    try:
        assert all(r["decision"] == "no decision (axial-trained models)" for r in c.score_table(j) if r["scored"])
    finally:
        c.ood.in_distribution = was


def test_a_file_dropped_on_a_full_upload_box_is_the_one_analysed(methods_root, lesion_volume, monkeypatch):
    """The page's file box keeps the files listed before: a new image dropped on it is analysed
    (with a note), not refused as "separate images"; the API keeps refusing such an upload."""
    import gradio as gr

    from anomaly.ui.app import on_upload, on_upload_page

    png = ROOT / "assets" / "examples" / "healthy_stripped_t1_axial.png"
    assert cb.newest_image([str(lesion_volume), str(png)]) == png
    assert cb.newest_image([str(png)]) is None and cb.newest_image(None) is None
    infos = []
    monkeypatch.setattr(gr, "Info", lambda msg, *x, **k: infos.append(msg))
    outs = list(on_upload_page([str(lesion_volume), str(png)], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                               progress=lambda *a, **k: None))
    a = cb.get_analysis(outs[-1][0])
    assert a.n_slices == 1 and not a.scan.is_volume  # the PNG, the last one added
    assert infos and "healthy_stripped_t1_axial.png" in infos[0]
    # the summary says it as well (the toast goes while the box keeps listing both files)
    assert "shown is the last one added (healthy_stripped_t1_axial.png)" in outs[-1][3]
    with pytest.raises(gr.Error, match="separate images"):
        list(on_upload([str(lesion_volume), str(png)], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                       progress=lambda *a, **k: None))


def test_a_good_file_dropped_after_a_refused_one_is_analysed(methods_root, lesion_volume, tmp_path, monkeypatch):
    """The page's box keeps a refused file listed: a good image dropped next was never shown (the
    refused file's message came back for the whole box); an empty file dropped last is answered as a
    lone empty file is, not skipped unseen behind the scan in view."""
    import gradio as gr

    from anomaly.ui.app import on_upload_page

    bad = tmp_path / "corrupt.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 50)
    png = ROOT / "assets" / "examples" / "healthy_stripped_t1_axial.png"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    monkeypatch.setattr(gr, "Info", lambda *a, **k: None)
    warned = []
    monkeypatch.setattr(gr, "Warning", lambda msg, *x, **k: warned.append(msg))
    run = lambda files: list(on_upload_page([str(f) for f in files], None, "axial", ["zscore"], "auto", 0.5, 1.0,
                                            "both", progress=lambda *a, **k: None))
    outs = run([bad])
    assert outs[-1][0] is None and "Not loaded" in outs[-1][2]["value"]  # refused alone, as before
    outs = run([lesion_volume, bad, png])
    a = cb.get_analysis(outs[-1][0])
    assert a.n_slices == 1 and "shown is the last one added (healthy_stripped_t1_axial.png)" in outs[-1][3]
    assert outs[-1][9]["visible"] is False  # no series chooser left over from a listed DICOM upload
    warned.clear()
    outs = run([lesion_volume, empty])
    assert outs[-1][0] is None and "empty" in outs[-1][2]["value"] and warned and "empty.png" in warned[0]


def test_the_api_json_carries_the_loading_notes(methods_root, lesion_volume, tmp_path):
    """The page's summary said "N non-finite voxels replaced", "4D file: volume 1", "files ignored";
    the API's JSON said nothing of them (a caller could not tell a NIfTI was dropped from a mixed upload)."""
    import nibabel as nib

    img = nib.load(str(lesion_volume))
    v = np.asarray(img.dataobj, np.float32).copy()
    v[0, 0, :3] = np.nan
    nan_file = tmp_path / "nans.nii.gz"
    nib.save(nib.Nifti1Image(v, img.affine), str(nan_file))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _, a = cb.load_and_analyse([str(nan_file), str(empty)], ["zscore"], "axial")
    notes = cb.api_summary(a)["notes"]
    assert any("3 non-finite voxels" in n for n in notes) and any("1 empty file" in n for n in notes)
    _, clean = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    assert cb.api_summary(clean)["notes"] == []


def test_a_window_warning_is_given_once_per_load(methods_root, lesion_volume, monkeypatch):
    """A volume loads in two steps (its first slice, then all): a bad window warns once, not twice."""
    import gradio as gr

    from anomaly.ui.app import on_upload

    with cb._LOCK:
        cb._CACHE.clear()
    warned = []
    monkeypatch.setattr(gr, "Warning", lambda msg, *x, **k: warned.append(msg))
    outs = list(on_upload([str(lesion_volume)], None, "axial", ["zscore"], "brain", 0.5, 1.0, "both",
                          progress=lambda *a, **k: None))
    assert len(outs) == 2 and len(warned) == 1 and "Hounsfield" in warned[0]


def test_a_method_ticked_after_loading_is_scored_and_shown(methods_root, lesion_volume):
    """Ticking a method the scan was not scored with scores it (the others are reused, not re-run),
    under a new key, and the view, table and findings then show it; before, it was silently left out."""
    from anomaly.ui.app import on_methods

    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    idx = a.results["zscore"].most_anomalous_slice
    new_key, grid, table, compare, curve, findings, banner = on_methods(
        key, idx, "auto", 0.5, 1.0, "both", ["zscore", "ae"], progress=lambda *a, **k: None)
    assert new_key != key
    b = cb.get_analysis(new_key)
    assert list(b.results) == ["zscore", "ae"] and list(a.results) == ["zscore"]  # the first analysis is untouched
    assert b.results["zscore"] is a.results["zscore"]  # reused
    assert list(table["method"]) == ["zscore", "ae"]
    # the same as scoring both at upload
    _, both = cb.load_and_analyse([str(lesion_volume)], ["zscore", "ae"], "axial", seed=1)
    assert np.allclose(b.results["ae"].scores, both.results["ae"].scores)
    assert len(findings) == len(cb.findings_rows(new_key, 1.0, ["zscore", "ae"]))
    assert cb.ensure_methods(new_key, ["ae"]) == (new_key, b)  # nothing missing: the same analysis
    assert cb.ensure_methods(key, ["zscore", "ae"])[0] == new_key  # cached, like an upload's analysis


def test_unticking_every_method_shows_the_input_alone(methods_root, lesion_volume):
    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore", "ae"], "axial")
    grid, table, (img, ph) = cb.render_view(key, 30, methods=[])
    assert table == [] and cb.findings_rows(key, 1.0, []) == []
    assert np.array_equal(img, ph)  # the compare slider: the input on both sides
    assert cb.compare_label(a, []) == "Compare: no method ticked (input on both sides)"
    one_row, _, _ = cb.render_view(key, 30, methods=["zscore"], extra_rows=False)
    assert grid.size == one_row.size  # one row: the input, saying that no method is ticked
    arr = np.asarray(grid)
    assert arr[40:200, 20:200].std() > 10  # the input is drawn, not a blank image
    # None (the API's default) still means every method
    assert [r["method"] for r in cb.render_view(key, 30, methods=None)[1]] == ["zscore", "ae"]


def test_clearing_the_upload_box_empties_the_viewer():
    from anomaly.ui.app import on_clear

    out = on_clear()
    key, slider, banner, summary, curve, grid, table, findings, compare, series, plane, centre = out
    assert key is None and grid is None and curve is None and centre is None
    assert compare["value"] is None and compare["label"] == "Compare: input vs pseudo-healthy"  # no stale caption
    assert summary == "" and banner["visible"] is False and slider["interactive"] is False
    assert table.empty and findings.empty and list(findings.columns)[:2] == ["method", "peak (x threshold)"]


def test_a_typed_number_out_of_range_is_taken_as_the_nearest_end():
    """Gradio's slider refused it before any callback ran, with "Error" badges on every output."""
    from anomaly.ui.components import ClampedSlider

    s = ClampedSlider(0, 89, value=0, step=1, label="Slice")
    assert s.get_block_name() == "slider"  # drawn by Gradio's own slider
    assert s.preprocess(200) == 89 and s.preprocess(-3) == 0 and s.preprocess(40) == 40
    assert s.preprocess(float("nan")) == 0 and s.preprocess("x") == 0
    z = ClampedSlider(1, 4, value=1, step=0.5, label="Zoom")
    assert z.preprocess(9) == 4
    assert s.preprocess(45.7) == 46 and z.preprocess(2.2) == 2.0 and z.preprocess(2.3) == 2.5  # the nearest step
    assert not list((ROOT / "anomaly").rglob("*.pyi"))  # Gradio's stub writer was kept out of the package


def test_the_window_box_says_what_is_drawn(methods_root, lesion_volume):
    from anomaly.ui.app import WINDOW_CHOICES, window_in_force

    key, _ = cb.load_and_analyse([str(lesion_volume)], ["zscore"], "axial")
    assert window_in_force("garbage", key)["value"] == "auto"
    assert window_in_force("brain", key)["value"] == "auto"  # a CT window on MR is drawn as 'auto'
    assert window_in_force("L40 W80", key) == {"__type__": "update"}
    assert window_in_force("auto", key) == {"__type__": "update"}
    assert ("brain (CT)", "brain") in WINDOW_CHOICES and ("auto", "auto") in WINDOW_CHOICES


def test_a_new_scan_opens_axial_at_1x_and_the_page_shows_no_volume_score(methods_root, lesion_volume):
    """A scan dropped on the box after another was left coronal at 2x opens axial at 1x; the score
    table on the page leaves out the volume score (the skull base sets it on every scan here)."""
    from anomaly.ui.app import on_new_scan

    outs = list(on_new_scan([str(lesion_volume)], None, "coronal", ["zscore"], "auto", 0.5, 1.0, "both", True, None,
                            2.0, progress=lambda *a, **k: None))
    last = outs[-1]
    assert len(last) == 13 and last[-1] == 1.0
    key, table, plane = last[0], last[6], last[10]
    assert plane["value"] == "axial" and cb.get_analysis(key).plane == "axial"
    assert "volume score" not in table.columns and "percentile vs healthy" in table.columns


def test_percentiles_read_as_a_reader_says_them():
    from anomaly.calibration import percentile_text

    assert [percentile_text(p) for p in (100.0, 99.96, 99.5, 61.0, 1, 2, 3, 11, 12, 13, 21, 22.0)] == [
        "100th", "100th", "99.5th", "61st", "1st", "2nd", "3rd", "11th", "12th", "13th", "21st", "22nd"]


def test_controls_touched_before_a_scan_is_loaded_do_nothing():
    """They raised "no scan loaded" errors that stacked up and stayed after a scan was loaded."""
    from anomaly.ui.app import on_threshold, on_view

    assert on_view(None, 0, "auto", 0.5, 1.0, "both", []) == tuple({"__type__": "update"} for _ in range(4))
    assert on_threshold(None, 0, "auto", 0.5, 1.0, "both", []) == tuple({"__type__": "update"} for _ in range(5))


def test_methods_show_in_validation_order_whatever_order_they_were_ticked_in(methods_root):
    """Ticking zscore first used to put it first in the grid, the table and the compare slider, and
    a re-click of a cached example with other tick order scored it again."""
    png = str(ROOT / "assets/examples/synthetic_tumour_t1_axial.png")
    ticked = ["zscore", "ae", "consensus"]
    order = cb.in_method_order(ticked)
    assert sorted(order) == sorted(ticked) and order == sorted(ticked, key=cb.validation_rank)
    key, a = cb.load_and_analyse(png, ticked[::-1])
    assert list(a.results) == order and cb.shown_methods(a, ticked) == order
    _, table, _ = cb.render_view(key, 0, methods=ticked)
    assert [r["method"] for r in table] == order
    assert cb.load_and_analyse(png, ticked)[0] == key  # the same analysis, not scored again
    assert cb.in_method_order(["ae", "ae", "zscore"]).count("ae") == 1


def test_the_analysis_cache_is_bounded_by_memory_and_keeps_the_newest(methods_root, monkeypatch):
    png = str(ROOT / "assets/examples/synthetic_tumour_t1_axial.png")
    k1, a1 = cb.load_and_analyse(png, ["zscore"])
    size = cb.analysis_bytes(a1)
    assert size > a1.scan.voxels.nbytes  # the maps count too
    monkeypatch.setattr(cb, "MAX_CACHED_BYTES", int(size * 1.5))
    k2, _ = cb.load_and_analyse(png, ["ae"])
    assert cb.get_analysis(k2) is not None
    with pytest.raises(AnomalyError):
        cb.get_analysis(k1)  # the oldest went first
    monkeypatch.setattr(cb, "MAX_CACHED_BYTES", 1)
    k3, _ = cb.load_and_analyse(png, ["zscore", "ae"])
    assert cb.get_analysis(k3) is not None  # the newest stays, whatever its size


def test_also_flagged_by_names_only_methods_with_a_finding_there(methods_root, lesion_volume):
    from anomaly.analysis import _without_small

    r = np.zeros((3, 10, 10), bool)
    r[1, 2:4, 2:4] = True  # 4 voxels: no finding
    r[0:3, 5:9, 5:9] = True  # 48 voxels
    kept = _without_small(r, 10)
    assert not kept[1, 2:4, 2:4].any() and kept[0:3, 5:9, 5:9].all()
    key, a = cb.load_and_analyse([str(lesion_volume)], ["zscore", "ae"], "axial")
    for f in a.findings_across(["zscore", "ae"], 1.0):
        for other in [o for o in f["also flagged by"].split(", ") if o != "none"]:
            own = a.findings(other, 1.0)
            assert own, f"{other} is named but has no finding at all"


def test_the_compare_slider_offers_the_shown_methods_with_a_pseudo_healthy_image(methods_root):
    png = str(ROOT / "assets/examples/synthetic_tumour_t1_axial.png")
    key, a = cb.load_and_analyse(png, ["zscore", "ae", "consensus"])
    choices, value = cb.compare_choices(key, ["ae", "consensus"], "consensus")
    assert choices == [cb.AUTO_COMPARE, "ae"] and value == cb.AUTO_COMPARE  # consensus has none
    assert cb.compare_choices(key, ["zscore", "ae"], "ae")[1] == "ae"  # a choice still offered stays
    assert set(cb.compare_choices(key, None)[0]) == {cb.AUTO_COMPARE, "zscore", "ae"}
    assert cb.compare_choices(None, None)[0][0] == cb.AUTO_COMPARE  # before a scan: every method
    # the page's event wraps it; before a scan it leaves the chosen value alone
    from anomaly.ui.app import on_compare_choices

    assert on_compare_choices(key, ["ae", "consensus"], "consensus")["value"] == cb.AUTO_COMPARE
    assert "value" not in on_compare_choices(None, None, "ae")


def test_every_way_of_loading_a_scan_ends_on_the_latest_one(methods_root):
    """Wiring: the button, an upload and an example click load in one queue, and one asked for while
    another is scoring runs after it (always_last), so the page ends on the scan last chosen
    (a second example clicked during the first's scoring used to be dropped)."""
    from anomaly.ui import LOAD_QUEUE
    from anomaly.ui.app import build_app

    demo = build_app()
    cfg = demo.get_config_file()
    loads = [d for d in cfg["dependencies"]
             if str(d.get("api_name")).startswith(("on_new_scan", "on_upload_page", "_open", "worklist_open_study"))]
    kinds = sorted(e for d in loads for _, e in d["targets"])
    assert kinds == ["click", "click", "then", "then", "upload"]  # + a Worklist study (row click, button)
    for d in loads:
        assert d["trigger_mode"] == "always_last"
        assert demo.fns[d["id"]].concurrency_id == LOAD_QUEUE["concurrency_id"]
        assert demo.fns[d["id"]].concurrency_limit == 1


def test_the_slice_slider_sits_between_the_curve_and_the_grid():
    """On a phone the columns stack: the slider sat above the per-slice curve, a curve's height away
    from the images it moves; it now sits under the curve (whose x axis is the slice), right above the grid."""
    from anomaly.ui.app import build_app

    demo = build_app()
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    grid = by_id["grid"]
    column = grid.parent
    kids = list(column.children)

    def child_holding(block):  # Gradio wraps form components (the slider) in a Form of the column
        while block.parent is not column:
            block = block.parent
        return block

    slider = child_holding(by_id["slice-slider"])
    curve = next(k for k in kids if type(k).__name__ == "Plot")
    assert kids.index(curve) < kids.index(slider) < kids.index(grid)
    between = kids[kids.index(slider) + 1 : kids.index(grid)]
    assert [type(k).__name__ for k in between] == ["Markdown"]  # the grid's caption only


def test_the_grid_shows_every_method_before_any_extra_map(methods_root, lesion_volume, monkeypatch):
    """The methods compare in the first rows: the extra maps (e.g. the consensus's votes) follow all
    of them, rather than pushing the next method off the first screen."""
    import anomaly.analysis as an
    from anomaly.render import RenderConfig

    _, a = cb.load_and_analyse(str(lesion_volume), ["consensus", "zscore", "ae"], "axial")
    seen = {}
    real = an.compose_grid

    def spy(rows, *args, **kw):
        seen["titles"] = [r.name for r in rows]
        return real(rows, *args, **kw)

    monkeypatch.setattr(an, "compose_grid", spy)
    a.render(30, RenderConfig(), methods=["consensus", "zscore", "ae"])
    titles = seen["titles"]
    extra = [i for i, t in enumerate(titles) if "·" in t]
    plain = [i for i, t in enumerate(titles) if "·" not in t]
    assert extra and len(plain) == 3 and max(plain) < min(extra)
    a.render(30, RenderConfig(), methods=["consensus", "zscore", "ae"], extra_rows=False)
    assert not [t for t in seen["titles"] if "·" in t]


def test_the_series_chooser_names_series_by_key_not_uid(tmp_path, monkeypatch, methods_root):
    """A multi-series upload: the chooser's values (sent to the page and to API clients) are salted series
    keys, never SeriesInstanceUIDs, and choosing one loads that series."""
    import gradio as gr

    from anomaly.ui.app import on_upload
    from tests.test_io_dicom import _two_series_zip

    monkeypatch.setattr(gr, "Warning", lambda *a, **k: None)
    zpath, first_uid, second_uid = _two_series_zip(tmp_path)
    run = lambda series: list(on_upload([str(zpath)], series, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                                        progress=lambda *a, **k: None))
    outs = run(None)
    chooser = outs[-1][9]
    values = [v for _, v in chooser["choices"]]
    assert len(values) == 2 and all(v.startswith("se-") for v in values)
    assert first_uid not in str(outs[-1]) and second_uid not in str(outs[-1])
    small = next(v for label, v in chooser["choices"] if "3 images" in label)
    outs = run(small)
    assert cb.get_analysis(outs[-1][0]).n_slices == 3


def test_a_cached_analysis_takes_the_files_of_the_latest_upload(tmp_path, methods_root):
    """The same content uploaded again (another session, another temp folder) is a cache hit; its source files
    are now the latest upload's (the first upload's may be gone, and a DICOM SEG export reads them)."""
    import shutil

    src = ROOT / "assets" / "examples" / "healthy_stripped_t1_axial.png"
    first, second = tmp_path / "a" / src.name, tmp_path / "b" / src.name
    for p in (first, second):
        p.parent.mkdir()
        shutil.copy(src, p)
    k1, a1 = cb.load_and_analyse([str(first)], ["zscore"], "axial")
    k2, a2 = cb.load_and_analyse([str(second)], ["zscore"], "axial")
    assert a2 is a1 and [Path(p) for p in a2.source_paths] == [second]
