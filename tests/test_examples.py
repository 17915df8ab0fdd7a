"""The bundled example volumes with the bundled checkpoints: what assets/examples/README.md says of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "assets" / "examples"


def _lesion_slices(mask_file: str) -> np.ndarray:
    from anomaly.io import load_scan

    m = load_scan(EX / mask_file)
    les = np.stack([m.slice(i, "axial") for i in range(m.n_slices_in("axial"))]) > 0
    return np.nonzero(les.reshape(len(les), -1).any(1))[0]


def test_shipped_models_find_the_haemorrhage_example_and_open_on_it():
    import anomaly.methods.base as base
    from anomaly.ui import callbacks as cb

    if not (base.CHECKPOINT_ROOT / "ddad" / "card.json").exists():
        pytest.skip("no bundled ddad checkpoint")
    base.clear_cache()
    _, a = cb.load_and_analyse([str(EX / "synthetic_haemorrhage_t1.nii.gz")], None, "axial")  # all single-pass
    ls = _lesion_slices("synthetic_haemorrhage_t1_mask.nii.gz")
    assert ls.min() == 31 and ls.max() == 40
    p = a.results["ddad"].percentiles[ls]
    assert (p >= 95).sum() >= 8 and np.nanmedian(p) >= 99  # most lesion slices "anomalous" for ddad
    assert np.nanmax(a.results["zscore"].percentiles[ls]) < 50  # the baseline misses it
    assert ls.min() <= a.most_anomalous_slice() <= ls.max()  # the app opens inside the lesion
    base.clear_cache()


def test_a_loaded_bundled_example_says_what_it_is(tmp_path):
    """After a click on an example, the summary says that its lesion is synthetic and where its mask
    is (the Examples label alone is gone once the scan is in view); a user's file that only shares
    the name is not called an example; every example offered has its note."""
    import shutil

    from anomaly.ui.app import EXAMPLE_NOTES, _examples, example_note

    rows, labels = _examples()
    assert len(rows) == len(labels) and labels[-1].startswith("DICOM series: brain_pd_series (")
    for name in labels[:-1]:
        assert name in EXAMPLE_NOTES
    copy = tmp_path / "synthetic_tumour_t1_axial.png"  # as Gradio hands it over: a copy in its cache
    shutil.copy(EX / copy.name, copy)
    note = example_note([str(copy)])
    assert "**synthetic** tumour" in note and "synthetic_tumour_t1_axial_mask.png" in note
    assert "healthy" in example_note([str(EX / "healthy_t1.nii.gz")])
    other = tmp_path / "other" / copy.name
    other.parent.mkdir()
    other.write_bytes(copy.read_bytes()[:-10] + b"0" * 20)  # same name, not the example
    assert example_note([str(other)]) == ""
    assert example_note([str(copy), str(copy)]) == "" and example_note(None) == ""


def test_the_example_note_stays_after_a_plane_change(tmp_path):
    """The note (where the synthetic lesion is) was gone once the plane changed."""
    import shutil

    from anomaly.ui import callbacks as cb
    from anomaly.ui.app import on_plane

    copy = tmp_path / "synthetic_haemorrhage_t1.nii.gz"
    shutil.copy(EX / copy.name, copy)
    key, _ = cb.load_and_analyse([str(copy)], ["zscore"], "axial")
    outs = list(on_plane(key, "coronal", "auto", 0.5, 1.0, "both", ["zscore"], progress=lambda *a, **k: None))
    summary = outs[-1][7]
    assert "Bundled example" in summary and "plane coronal" in summary
