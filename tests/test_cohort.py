"""The cohort builder: determinism, no leakage, label/mask alignment, the data-set format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from anomaly.data.build import SPLITS, build
from anomaly.data.folder import iter_samples, read_folder, read_image, read_mask

pytestmark = pytest.mark.timeout(180)

MAIN = ("train", "val_normal", "val_lesion", "test", "unlabeled", "test_volumes")
LOO = ("train_loo", "val_normal_loo", "test_heldout")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    a = root / "a"
    build(a, seed=0, subjects=2, tiny=True, workers=1, progress=False)
    b = root / "b"
    build(b, seed=0, subjects=2, tiny=True, workers=1, progress=False)
    c = root / "c"  # another seed: a few splits are enough to see that files differ
    build(c, seed=1, subjects=2, tiny=True, workers=1, progress=False, only=("train", "test"))
    return a, b, c


def _rows(split_dir: Path) -> list[dict]:
    with open(split_dir / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "build_timing.json"}


def test_deterministic_under_seed(builds):
    a, b, c = builds
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa.keys() == fb.keys()
    assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]][:5]
    common = [k for k in fa if k in fc and k.endswith(".png") and "/images/" in k]
    assert sum(fa[k] != fc[k] for k in common) > 0.8 * max(1, len(common))


def test_all_splits_written_with_manifest(builds):
    a = builds[0]
    man = json.loads((a / "manifest.json").read_text())
    assert "SYNTHETIC" in man["statement"]
    for s in SPLITS:
        assert (a / s / "labels.csv").exists(), s
        assert man["splits"][s]["files"] == len(_rows(a / s))
        for r in _rows(a / s):
            assert (a / s / "images" / r["file"]).exists()
            assert (a / s / "brainmasks" / r["file"]).exists()  # ground-truth brain mask per file
            for col in ("kind", "size_mm", "subject", "source", "skull"):
                assert col in r


def test_no_pseudo_subject_in_two_splits(builds):
    a = builds[0]
    subj = {s: {r["subject"] for r in _rows(a / s)} for s in SPLITS}
    for family in (MAIN, LOO):
        for i, s in enumerate(family):
            for t in family[i + 1 :]:
                assert not (subj[s] & subj[t]), (s, t, subj[s] & subj[t])
    # the test sets share no pseudo-subject with any training set
    for test in ("test", "test_heldout", "val_lesion", "test_volumes"):
        for tr in ("train", "train_loo", "val_normal", "val_normal_loo", "unlabeled"):
            assert not (subj[test] & subj[tr]), (test, tr)
    # held-out anatomy: test_heldout only from the held-out brain, train_loo never from it
    assert {r["source"] for r in _rows(a / "test_heldout")} == {"colin27"}
    assert "colin27" not in {r["source"] for r in _rows(a / "train_loo")}
    assert "colin27" not in {r["source"] for r in _rows(a / "val_normal_loo")}
    assert {r["source"] for r in _rows(a / "test_domain_shift")} == {"itk"}


def test_normal_fraction_and_labels(builds):
    a = builds[0]
    for s in ("test", "test_heldout", "val_lesion", "test_domain_shift"):
        lab = [int(r["label"]) for r in _rows(a / s)]
        assert 0 < sum(lab) < len(lab)
        assert 1 - np.mean(lab) >= 0.4, s
    for s in ("train", "val_normal", "train_loo", "val_normal_loo"):
        assert all(r["label"] == "0" for r in _rows(a / s))
    un = _rows(a / "unlabeled")
    assert all(r["label"] == "" for r in un)
    assert {r["truth"] for r in un} == {"0", "1"}
    assert not (a / "unlabeled" / "masks").exists()


def test_masks_align_with_labels(builds):
    a = builds[0]
    for s in ("test", "val_lesion", "test_heldout", "test_domain_shift"):
        for r in _rows(a / s):
            mp = a / s / "masks" / r["file"]
            if r["label"] == "1":
                m = read_mask(mp)
                assert m.any()
                assert int(m.sum()) == int(r["lesion_px"])
                brain = read_mask(a / s / "brainmasks" / r["file"])
                assert (m & ~brain).sum() == 0  # lesions lie inside the brain
                assert r["kind"] != "none" and float(r["size_mm"]) > 0
                # in-slice extent: at least one pixel's width, at most the mask's bounding-box diagonal
                ys, xs = np.nonzero(np.squeeze(m))
                diag_px = np.hypot(np.ptp(ys) + 1, np.ptp(xs) + 1)
                assert 0 < float(r["slice_extent_mm"]) <= diag_px * 3.0 + 0.1  # spacing <= 3 mm
                assert 0 < float(r["lesion_contrast"]) < 5
            else:
                assert not mp.exists() and r["slice_extent_mm"] == "" and r["lesion_contrast"] == ""


def test_lesion_contrast_is_the_mean_change_in_units_of_bright_brain():
    from anomaly.data.cohort import lesion_contrast

    healthy = np.full((20, 20), 2.0)
    brain = np.zeros((20, 20), bool)
    brain[2:18, 2:18] = True
    lesion = np.zeros((20, 20), bool)
    lesion[5:9, 5:9] = True
    lesioned = healthy.copy()
    lesioned[5:9, 5:7] = 1.0  # half the lesion darker by 1.0, half brighter by 0.2
    lesioned[5:9, 7:9] = 2.2
    assert lesion_contrast(lesioned, healthy, lesion, brain) == pytest.approx(0.6 / 2.0)
    assert lesion_contrast(lesioned, healthy, np.zeros_like(lesion), brain) == 0.0
    lesioned[~brain] = 50.0  # outside the lesion: no effect
    assert lesion_contrast(lesioned, healthy, lesion, brain) == pytest.approx(0.3)


def test_lesion_changes_intensity_inside_mask(builds):
    """Domain-shift lesion slices are copies of real slices: they differ inside the mask only."""
    a = builds[0] / "test_domain_shift"
    rows = _rows(a)
    normal = {r["slice"]: r for r in rows if r["label"] == "0"}
    ratios = []
    for r in rows:
        if r["label"] != "1" or int(r["lesion_px"]) < 3:
            continue
        assert r["slice"] in normal  # every informative slice of the real subject is a normal file
        les = read_image(a / "images" / r["file"])[0]
        ref = read_image(a / "images" / normal[r["slice"]]["file"])[0]
        m = read_mask(a / "masks" / r["file"])[0]
        les, ref = les / les.max(), ref / ref.max()
        outside = ~m & (ref > 0.05)
        scale = np.median(les[outside] / np.maximum(ref[outside], 1e-6))
        d_in = np.abs(les[m] - scale * ref[m]).mean()
        d_out = np.abs(les[outside] - scale * ref[outside]).mean()
        ratios.append(d_in / (d_out + 1e-4))
    assert ratios
    assert min(ratios) > 1.0 and np.median(ratios) > 3.0, ratios


def test_add_lesion_local_matches_volume():
    from anomaly.data.augment import load_source, spatial_augment
    from anomaly.data.cohort import add_lesion_local

    src = load_source("mni152", 3.0)
    ps = spatial_augment(src, 5)
    img = ps.images["stripped"]
    for kind in ("tumour", "stroke"):
        v, m, info = add_lesion_local(img, ps.brain, kind, 15.0, np.random.default_rng(1), ps.spacing, ps.wm, ps.gm)
        assert v.shape == img.shape and m.shape == img.shape and m.any()
        assert not (m & ~ps.brain).any()
        assert np.abs(v - img)[m].mean() > 0.02
        assert m[info.centre] or m.sum() < 10
        assert len(np.flatnonzero(m.any(axis=(1, 2)))) >= 2  # a 3D lesion spans slices


def test_format_round_trip(builds):
    a = builds[0]
    for s in ("test", "val_lesion", "train", "unlabeled", "test_domain_shift"):
        rows = {r["file"]: r for r in _rows(a / s)}
        items = read_folder(a / s)
        assert len(items) == len(rows)
        n = 0
        for smp in iter_samples(a / s):
            r = rows[smp.item.image_path.name]
            assert smp.image.ndim == 2 and smp.image.max() > 0
            if s == "unlabeled":
                assert smp.label is None and smp.mask is None
            else:
                assert smp.label == int(r["label"])
            n += 1
        assert n == len(rows)


def test_volumes_have_3d_lesions(builds):
    a = builds[0] / "test_volumes"
    rows = _rows(a)
    assert {r["label"] for r in rows} == {"0", "1"}
    for r in rows:
        img = read_image(a / "images" / r["file"])
        brain = read_mask(a / "brainmasks" / r["file"])
        assert img.ndim == 3 and img.shape[0] > 5 and brain.shape == img.shape
        if r["label"] == "1":
            m = read_mask(a / "masks" / r["file"])
            assert m.shape == img.shape
            assert int(m.any(axis=(1, 2)).sum()) > 1
        else:
            assert not (a / "masks" / r["file"]).exists()
    samples = list(iter_samples(a))
    assert sum(s.label == 1 for s in samples) > 1


def test_level_matched_normals_sit_at_the_lesion_levels():
    import numpy as np

    from anomaly.data.cohort import _level_matched

    rng = np.random.default_rng(0)
    free = [z for z in range(10, 100) if not 40 <= z <= 60]  # the lesion's extent + guard band is taken
    picks = _level_matched(free, 6, rng, [45, 50, 55], (10, 99))
    assert len(picks) == 6 and len(set(picks)) == 6 and set(picks) <= set(free)
    assert all(35 <= z <= 65 for z in picks)  # the nearest free levels, above and below the lesion
    # a healthy subject: the level prior keeps the draws away from the extremes
    draws = [z for s in range(20) for z in _level_matched(list(range(10, 100)), 5, np.random.default_rng(s), [], (10, 99))]
    assert 40 <= np.mean(draws) <= 70 and np.mean([z < 20 or z > 90 for z in draws]) < 0.1
    assert _level_matched([], 3, rng, [50], (10, 99)) == [] and _level_matched(free, 0, rng, [50], None) == []


def test_verify_names_the_subjects_whose_slices_differ_from_the_reference(tmp_path):
    """``python -m anomaly.data verify``: a rebuilt test split against the benchmarked one."""
    import csv

    from anomaly.data.__main__ import main
    from anomaly.data.verify import REFERENCE, compare_split

    ref_rows = list(csv.DictReader(open(REFERENCE)))
    assert len(ref_rows) == 282 and {"file", "label", "kind", "size_mm", "slice_extent_mm"} <= set(ref_rows[0])
    split = tmp_path / "cohort" / "test"
    split.mkdir(parents=True)
    cols = ["file", "label", "kind", "size_mm", "subject", "slice_extent_mm"]

    def write(rows):
        with open(split / "labels.csv", "w", newline="") as f:
            w = csv.DictWriter(f, cols)
            w.writeheader()
            w.writerows(rows)

    same = [{"file": r["file"], "label": r["label"], "kind": r["kind"] or "none", "size_mm": r["size_mm"],
             "subject": r["file"].rsplit("_", 1)[0], "slice_extent_mm": r["slice_extent_mm"]} for r in ref_rows]
    write(same)
    assert compare_split(split).identical and main(["verify", "--data", str(tmp_path / "cohort")]) == 0
    changed = [dict(r) for r in same]
    lesion = next(i for i, r in enumerate(changed) if r["label"] == "1")
    changed[lesion]["size_mm"] = str(float(changed[lesion]["size_mm"]) + 5)
    write(changed[:-1])  # one slice changed, one missing
    cmp = compare_split(split)
    assert not cmp.identical and cmp.n_matching == 280
    assert cmp.differing == {changed[lesion]["subject"]: [changed[lesion]["file"]]} and cmp.missing == [same[-1]["file"]]
    assert "figures on this build will differ" in cmp.report()
    assert main(["verify", "--data", str(tmp_path / "cohort")]) == 1
    assert main(["verify", "--data", str(tmp_path / "nothing")]) == 2
    (split / "labels.csv").write_bytes(b"\xff\xfe\x00garbage")  # a corrupt table: a message, not a traceback
    assert main(["verify", "--data", str(tmp_path / "cohort")]) == 2
    (split / "labels.csv").write_text("name,label\na.png,1\n")
    assert main(["verify", "--data", str(tmp_path / "cohort")]) == 2
