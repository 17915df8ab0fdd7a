"""Time of the findings list on a large matrix (the README's "Speed" figure for session 15).

    PYTHONPATH=. .venv/bin/python benchmarks/findings_large.py

The bundled healthy example's slices 30-49, resampled to 1024 x 1024 in-plane (0.25 mm pixels), are
analysed with the default methods; prints load + scoring, one grid render and the findings list.
"""
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from anomaly.data.folder import read_image
from anomaly.ui import callbacks as cb

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    v = read_image(ROOT / "assets/examples/healthy_t1.nii.gz").astype(np.float32)[30:50]
    big = ndimage.zoom(v, (1, 1024 / v.shape[1], 1024 / v.shape[2]), order=1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.nii.gz"
        nib.save(nib.Nifti1Image(np.transpose(big, (2, 1, 0)), np.diag([0.25, 0.25, 2.0, 1.0])), str(path))
        t = time.perf_counter()
        key, a = cb.load_and_analyse([str(path)], None, "axial")
        print(f"{a.scan.shape}: load + scoring {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        cb.render_view(key, a.n_slices // 2)
        print(f"one grid render {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        rows = cb.findings_rows(key, 1.0)
        print(f"findings list {time.perf_counter() - t:.1f} s ({len(rows)} findings)")


if __name__ == "__main__":
    main()
