"""Batch scoring (anomaly.batch): discovery, the scoring callable without Ray, a local Ray run
on a tiny mixed cohort (NIfTI, PNG, DICOM series, a corrupt file), parity with the app's
in-process analysis, and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly.batch import discover, read_results
from anomaly.batch.scorer import StudyScorer, col, rows_table, score_study, study_hash

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]
METHODS = ["zscore", "ae", "consensus"]


def make_cohort(out: Path, n_volumes: int = 1, n_slices: int = 12, extras: bool = True) -> Path:
    """NIfTI sub-volumes of the MNI template (+ a PNG slice, a DICOM series, a corrupt file, a note)."""
    from anomaly.data.folder import read_image, write_image

    v = read_image(ROOT / "assets" / "templates" / "mni152_2009a_t1_1mm.nii.gz")[::2, ::2, ::2]
    rng = np.random.default_rng(1)
    for i in range(n_volumes):
        start = 25 + 3 * i
        write_image(out / "nifti", f"vol{i:02d}", v[start : start + n_slices] * rng.uniform(0.9, 1.1),
                    spacing=(2.0, 2.0, 2.0))
    if extras:
        (out / "slices").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "assets" / "examples" / "healthy_stripped_t1_axial.png", out / "slices" / "a.png")
        shutil.copytree(ROOT / "assets" / "dicom" / "brain_pd_series", out / "dicom" / "series1")
        (out / "broken.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)
        (out / "notes.txt").write_text("not a study")
        (out / "LICENSE").write_text("plain text without a suffix: not a study either")
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def items(cohort) -> list[dict]:
    return discover(cohort)


@pytest.fixture(scope="module")
def plain_rows(items, tiny_checkpoints) -> pd.DataFrame:
    """The scoring callable on a plain batch, no Ray."""
    return StudyScorer(METHODS, str(tiny_checkpoints))(pd.DataFrame(items)).to_pandas()


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def expected(path, files, root: Path):
    """The in-process analysis of the app (load_scan + analyse)."""
    from anomaly.analysis import analyse
    from anomaly.io import load_scan

    return analyse(load_scan(files if len(files) > 1 else files[0]), METHODS, checkpoint_root=root)


def assert_parity(df: pd.DataFrame, items: list[dict], root: Path) -> None:
    from anomaly.batch.discovery import item_files

    for it in items:
        row = df[df["source"] == it["source"]]
        assert len(row) == 1
        row = row.iloc[0]
        if row["status"] != "ok":
            continue
        a = expected(it["source"], item_files(it), root)
        assert row["study_key"] == a.study_key
        assert row["top_slice"] == a.most_anomalous_slice()
        assert bool(row["ood"]) == (not a.ood.in_distribution)
        # the same pipeline; a Ray worker may run torch on another number of threads than this process,
        # which changes float sums in the last digits (seen: 5e-6 relative), not the figures
        for m, r in a.results.items():
            assert row[col(m, "score")] == pytest.approx(r.volume_score, rel=1e-4, abs=1e-7)
            np.testing.assert_allclose(np.asarray(row[col(m, "curve")]), r.scores, rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(np.asarray(row[col(m, "pct_curve")], float), r.percentiles, rtol=1e-4, atol=1e-3)
            assert row[col(m, "top_slice")] == r.most_anomalous_slice
            # the scan-level percentile is the API's (the top of n slices against the top of n healthy ones)
            from anomaly.ui.callbacks import api_summary

            api = api_summary(a)["methods"][m]["volume_percentile"]
            assert (api is None and np.isnan(row[col(m, "percentile")])) or row[col(m, "percentile")] == pytest.approx(api)
            assert row[col(m, "checkpoint_hash")] == r.checkpoint_hash


def test_discovery_finds_each_study_once(cohort, items):
    kinds = sorted(it["kind"] for it in items)
    assert kinds == ["dicom", "nifti", "png", "unknown"]  # notes.txt is not a study
    dicom = next(it for it in items if it["kind"] == "dicom")
    assert dicom["source"].endswith("series1")
    manifest = cohort / "manifest.csv"
    manifest.write_text("path\nslices/a.png\ndicom/series1\n")
    m = discover(manifest)
    assert [it["kind"] for it in m] == ["png", "dicom"]
    assert study_hash(m[1]) == study_hash(dicom)


def test_scorer_on_a_plain_batch(plain_rows, items, tiny_checkpoints):
    df = plain_rows
    assert len(df) == len(items)
    bad = df[df["source"].str.endswith("broken.nii.gz")].iloc[0]
    assert bad["status"] == "failed" and bad["error_type"] in ("CorruptFileError", "UnsupportedFileError")
    assert bad["study_key"].startswith("sk-")
    # a listed file that is gone: a failed row with the typed load error, the file's name and no folder
    src = "/no/such/folder/gone.nii.gz"  # listed (discovered, or a manifest row), then gone
    gone = score_study({"source": src, "files": json.dumps([src]), "kind": "nifti"}, METHODS, tiny_checkpoints)
    assert gone["status"] == "failed" and gone["error_type"] == "ScanLoadError"
    assert gone["error"].startswith("gone.nii.gz:") and "/no/such" not in gone["error"]
    ok = df[df["status"] == "ok"]
    assert len(ok) == 3
    for _, r in ok.iterrows():
        assert r["thumbnail"][:8] == b"\x89PNG\r\n\x1a\n"
        assert len(r[col("ae", "curve")]) == r["n_slices"] == r["shape"][0]
        assert np.isfinite(r[col("consensus", "score")])
    # no patient identifier: the DICOM row carries the salted key, not a UID or name
    text = " ".join(str(v) for v in df.drop(columns=[c for c in df if "thumbnail" in c]).to_numpy().ravel())
    assert "1.2.840" not in text and "^" not in text
    assert_parity(df, items, tiny_checkpoints)


def test_scorer_skips_done_studies(items, plain_rows, tiny_checkpoints):
    done = set(plain_rows["content_hash"])
    t = StudyScorer(["zscore"], str(tiny_checkpoints), done=done)(pd.DataFrame(items))
    assert t.num_rows == 0


def test_failure_is_a_row_not_an_exception(tmp_path, tiny_checkpoints):
    from anomaly.batch.discovery import item

    row = score_study(item(tmp_path / "gone.nii.gz", [tmp_path / "gone.nii.gz"], "nifti"), ["zscore"], tiny_checkpoints)
    assert row["status"] == "failed" and str(tmp_path) not in row["error"]
    assert rows_table([row], ["zscore"]).num_rows == 1


def test_local_ray_run_parity_and_resume(ray_local, cohort, items, tiny_checkpoints, tmp_path):
    from anomaly.batch.pipeline import run_batch

    out = tmp_path / "results"
    s = run_batch(items, METHODS, out, workers=2, checkpoint_root=tiny_checkpoints, progress=False)
    assert (s.ok, s.failed) == (3, 1)
    df = read_results(out)
    assert len(df) == len(items) and df["content_hash"].is_unique
    assert (df["status"] == "failed").sum() == 1
    assert_parity(df, items, tiny_checkpoints)
    parts = sorted(out.glob("*.parquet"))
    assert len(parts) == len(items)  # one part per study: a killed run keeps what it finished
    ok = df[df["status"] == "ok"]
    assert sorted(p.name for p in (out / "maps").glob("*.npz")) == sorted(f"{h}.npz" for h in ok["content_hash"])
    assert (ok["maps"] == "maps/" + ok["content_hash"] + ".npz").all() and (ok["maps_bytes"] > 0).all()
    # any Parquet reader, as docs/batch.md says: the part files, past the stored maps
    raw = pd.read_parquet(out, ignore_prefixes=["maps", "."])
    assert len(raw) == len(items) and set(raw["content_hash"]) == set(df["content_hash"])
    s2 = run_batch(items, METHODS, out, workers=1, checkpoint_root=tiny_checkpoints, progress=False)
    assert (s2.ok, s2.failed, s2.skipped) == (0, 0, len(items))
    assert sorted(out.glob("*.parquet")) == parts


def test_cli_reports_a_bad_input_without_a_traceback(tmp_path, tiny_checkpoints, capsys):
    from anomaly.batch.__main__ import main, resolve

    assert main(["--input", str(tmp_path / "missing"), "--out", str(tmp_path / "out"),
                 "--checkpoints", str(tiny_checkpoints)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert set(resolve("all", tiny_checkpoints)) == set(METHODS)
    if (ROOT / "checkpoints" / "anoddpm" / "card.json").exists():  # on-demand methods only when asked
        assert "anoddpm" not in resolve("all", ROOT / "checkpoints")
        assert "anoddpm" in resolve("all", ROOT / "checkpoints", include_on_demand=True)


def test_stored_maps_rebuild_the_apps_analysis(tmp_path, cohort, items, tiny_checkpoints, monkeypatch):
    """Maps stored by the scorer give back the app's analysis without running a model: same scores,
    top slice, verdict; maps within the 1/32 quantisation step; refused once the file changes."""
    import anomaly.scoring as scoring
    from anomaly.batch.discovery import item_files
    from anomaly.data.folder import read_image, write_image
    from anomaly.render import RenderConfig
    from anomaly.batch.maps import STEP, maps_path, stored_analysis
    from anomaly.errors import StaleResultsError
    from anomaly.io import load_scan

    it = next(i for i in items if i["kind"] == "nifti")
    row = score_study(it, METHODS, tiny_checkpoints, out=tmp_path)
    assert row["status"] == "ok" and (tmp_path / row["maps"]).is_file()
    live = expected(it["source"], item_files(it), tiny_checkpoints)
    scan = load_scan(item_files(it)[0])
    import anomaly.analysis as analysis

    monkeypatch.setattr(scoring, "run_method", lambda *a, **k: pytest.fail("a model ran"))
    monkeypatch.setattr(analysis, "score_prepared", lambda *a, **k: pytest.fail("a model ran"))
    a = stored_analysis(scan, maps_path(tmp_path, row["content_hash"]), row["content_hash"], tiny_checkpoints)
    assert a.origin and a.study_key == live.study_key == row["study_key"]
    assert a.most_anomalous_slice() == live.most_anomalous_slice() == row["top_slice"]
    assert a.ood.in_distribution == live.ood.in_distribution
    for m, r in live.results.items():
        s = a.results[m]
        np.testing.assert_array_equal(s.scores, r.scores)
        np.testing.assert_array_equal(s.raw_scores, r.raw_scores)  # stored, not the conditioned ones again
        np.testing.assert_array_equal(s.valid, r.valid)
        assert s.checkpoint_hash == r.checkpoint_hash
        cap = 255 / STEP
        np.testing.assert_allclose(s.calibrated_map, np.minimum(r.calibrated_map, cap), atol=0.5 / STEP + 1e-5)
        if r.pseudo_healthy is not None:
            np.testing.assert_allclose(s.pseudo_healthy, np.clip(r.pseudo_healthy, 0, 1.2), atol=1.2 / 255)
    i = a.most_anomalous_slice()
    for key in ("score", "raw score (top 1% of map)"):
        assert [t[key] for t in a.score_table(i)] == [t[key] for t in live.score_table(i)]
    assert a.render(i, RenderConfig()).size == live.render(i, RenderConfig()).size
    changed = write_image(tmp_path, "changed", read_image(item_files(it)[0]) * 1.01, spacing=(2.0, 2.0, 2.0))
    with pytest.raises(StaleResultsError, match="changed"):
        stored_analysis(load_scan(changed), maps_path(tmp_path, row["content_hash"]), row["content_hash"],
                        tiny_checkpoints)
    with pytest.raises(StaleResultsError, match="no stored maps"):
        stored_analysis(scan, maps_path(tmp_path, "0" * 64), None, tiny_checkpoints)
    # a damaged or foreign maps file is refused with a clear message, never a traceback
    good = maps_path(tmp_path, row["content_hash"])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(StaleResultsError, match="unreadable|incomplete"):
        stored_analysis(scan, bad, row["content_hash"], tiny_checkpoints)
    with np.load(good) as z:
        np.savez(bad, meta=z["meta"])  # the right header, no maps
    with pytest.raises(StaleResultsError, match="incomplete"):
        stored_analysis(scan, bad, row["content_hash"], tiny_checkpoints)


def test_a_part_being_written_is_skipped_quietly_by_the_progress_poll_and_reported_otherwise(tmp_path, caplog):
    import logging

    from anomaly.batch.results import read_part

    part = tmp_path / "part-0.parquet"
    part.write_bytes(b"PAR1 half a file")  # what the poller can meet while Ray writes a part
    with caplog.at_level(logging.WARNING, logger="anomaly.batch.results"):
        assert read_part(part, ["status"], warn=False) is None
        assert not caplog.records
        assert read_part(part) is None  # reading results afterwards: a truncated part is reported
        assert "skipping unreadable results part part-0.parquet" in caplog.text


def test_a_row_carries_the_loading_notes(tmp_path, tiny_checkpoints):
    """What loading changed (NaNs replaced, a 4D file's first volume) is in the row, as on the page and in /analyze."""
    import nibabel as nib

    from anomaly.batch.discovery import item
    from anomaly.data.folder import read_image

    v = read_image(ROOT / "assets" / "templates" / "mni152_2009a_t1_1mm.nii.gz")[::2, ::2, ::2][30:36].astype(np.float32)
    v[2, 10:20, 10:20] = np.nan
    four_d = np.stack([v.transpose(2, 1, 0)] * 2, axis=-1)  # display (z, y, x) -> NIfTI (x, y, z), two volumes
    p = tmp_path / "nan4d.nii.gz"
    nib.save(nib.Nifti1Image(four_d, np.diag([2.0, 2.0, 2.0, 1.0])), str(p))
    row = score_study(item(p, [p], "nifti"), ["zscore"], tiny_checkpoints)
    assert row["status"] == "ok", row.get("error")
    assert "non-finite" in row["notes"] and "volume" in row["notes"], row["notes"]
    assert rows_table([row], ["zscore"]).column("notes").to_pylist() == [row["notes"]]
