"""Volume-level evaluation: volume AUROC and whether the top slice lies inside the lesion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly.evaluate_volumes import evaluate_volumes, main

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def volume_set(tmp_path_factory):
    from anomaly.data.folder import read_image, write_image, write_mask

    v = read_image(ROOT / "assets/templates/mni152_2009a_t1_1mm.nii.gz")[40:150:2, ::2, ::2].copy()
    d = tmp_path_factory.mktemp("vols")
    write_image(d, "healthy", v, spacing=(2.0, 2.0, 2.0))
    les = v.copy()
    m = np.zeros(v.shape, bool)
    m[30:34, 50:62, 40:52] = True
    les[m] *= 0.2
    write_image(d, "lesion", les, spacing=(2.0, 2.0, 2.0))
    write_mask(d, "lesion", m, spacing=(2.0, 2.0, 2.0))
    return d


def test_volume_metrics_on_a_lesion_and_a_healthy_volume(volume_set, tiny_checkpoints, tmp_path):
    res = evaluate_volumes(volume_set, ["zscore"], tiny_checkpoints)
    assert res["n_volumes"] == 2 and res["n_lesion_volumes"] == 1
    z = res["methods"]["zscore"]
    assert z["volume_auroc"] == 1.0
    assert z["top_slice_in_lesion"] == 1.0
    app = res["app"]  # the slice the app opens on, with the chance of a random candidate slice
    assert app["opening_slice_in_lesion"] == 1.0 and 0 < app["chance"] < 0.5 and "brain section" in app["rule"]
    row = next(r for r in res["volumes"] if r["label"] == 1)
    assert 30 <= row["app"]["opening_slice"] <= 33
    rc = main(["--data", str(volume_set), "--methods", "zscore", "--out", str(tmp_path / "o"),
               "--checkpoints", str(tiny_checkpoints)])
    assert rc == 0 and (tmp_path / "o" / "volumes.json").exists() and (tmp_path / "o" / "volumes.md").exists()
    assert "The slice the app opens on" in (tmp_path / "o" / "volumes.md").read_text()


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nope"), "--methods", "zscore", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_labels_csv_labels_a_volume_without_mask_and_the_json_is_strict(volume_set, tiny_checkpoints, tmp_path, capsys):
    """A lesion volume known only from labels.csv counts as one; one class only: AUROC null, not NaN."""
    import json
    import shutil

    from anomaly.data.folder import write_labels

    d = tmp_path / "vols"
    shutil.copytree(volume_set, d)
    shutil.rmtree(d / "masks")
    write_labels(d, [{"file": "lesion.nii.gz", "label": 1}, {"file": "healthy.nii.gz", "label": 0}])
    res = evaluate_volumes(d, ["zscore"], tiny_checkpoints)
    assert res["n_lesion_volumes"] == 1 and res["methods"]["zscore"]["volume_auroc"] is not None
    assert res["methods"]["zscore"]["top_slice_in_lesion"] is None  # no mask: where the lesion is is unknown
    (d / "images" / "healthy.nii.gz").unlink()
    write_labels(d, [{"file": "lesion.nii.gz", "label": 1}])
    assert main(["--data", str(d), "--methods", "zscore", "--out", str(tmp_path / "o"),
                 "--checkpoints", str(tiny_checkpoints)]) == 0
    text = (tmp_path / "o" / "volumes.json").read_text()
    assert "NaN" not in text and json.loads(text)["methods"]["zscore"]["volume_auroc"] is None
    (tmp_path / "afile").write_text("x")
    assert main(["--data", str(d), "--methods", "zscore", "--out", str(tmp_path / "afile"),
                 "--checkpoints", str(tiny_checkpoints)]) == 2
    assert "is not a folder" in capsys.readouterr().err
