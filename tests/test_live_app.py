"""The live app on 127.0.0.1 driven through gradio_client, and the file route's refusals."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
ROOT = Path(__file__).resolve().parents[1]


def test_analyze_endpoint_returns_scores_json(live_app):
    from gradio_client import Client, handle_file

    c = Client(live_app, verbose=False)
    vol = ROOT / "assets" / "examples" / "synthetic_tumour_t1.nii.gz"
    if not vol.exists():
        vol = ROOT / "assets" / "templates" / "itk_subject_t1_2x2x3mm.nii.gz"
    out = json.loads(c.predict([handle_file(str(vol))], "zscore,ae", "axial", 1.0, api_name="/analyze"))
    assert set(out["methods"]) == {"zscore", "ae"}
    assert out["study_key"].startswith("sk-")
    assert len(out["methods"]["ae"]["slice_scores"]) == out["n_slices"] > 1
    assert out["score_table"][0]["method"] == "zscore"


def test_bad_upload_gives_clear_error_and_app_keeps_serving(live_app, tmp_path):
    from gradio_client import Client, handle_file

    bad = tmp_path / "notes.dcm"
    bad.write_text("not a dicom")
    c = Client(live_app, verbose=False)
    with pytest.raises(Exception) as e:
        c.predict([handle_file(str(bad))], "zscore", "axial", 1.0, api_name="/analyze")
    assert "DICOM" in str(e.value) or "dicom" in str(e.value).lower() or "not" in str(e.value)
    urllib.request.urlopen(live_app, timeout=5)  # still serving


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd",
                                  str(ROOT / "anomaly" / "keys.py")])
def test_file_route_refuses_files_outside_cache(live_app, path):
    for prefix in ("gradio_api/file=", "file="):
        try:
            r = urllib.request.urlopen(live_app + prefix + path, timeout=5)
            body = r.read()
            assert b"root:" not in body and b"def study_key" not in body
        except urllib.error.HTTPError as e:
            assert e.code in (400, 403, 404)
