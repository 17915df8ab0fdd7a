"""Print what the shipped models make of the bundled lesion volumes (assets/examples/README.md).

    PYTHONPATH=. .venv/bin/python benchmarks/example_figures.py
Per method, over the lesion slices (mask > 0), axial: how many are at or above the 95th healthy
percentile, their median and largest percentile, the peak of the calibrated map inside the lesion
(1.0 = the healthy pixel threshold), the volume percentile; and the slice the app opens on.
"""
from pathlib import Path

import numpy as np

from anomaly.io import load_scan
from anomaly.ui import callbacks as cb

EX = Path(__file__).resolve().parents[1] / "assets" / "examples"

for name in ("synthetic_haemorrhage_t1", "synthetic_tumour_t1", "healthy_t1"):
    _, a = cb.load_and_analyse([str(EX / f"{name}.nii.gz")], None, "axial")
    mask_file = EX / f"{name}_mask.nii.gz"
    if mask_file.exists():
        m = load_scan(mask_file)
        les = np.stack([m.slice(i, "axial") for i in range(m.n_slices_in("axial"))]) > 0
        ls = np.nonzero(les.reshape(len(les), -1).any(1))[0]
    else:
        les, ls = None, np.array([], int)
    print(f"== {name}: opens on slice {a.most_anomalous_slice()}; lesion slices {ls.min() if len(ls) else '-'}-"
          f"{ls.max() if len(ls) else '-'}")
    for n, r in sorted(a.results.items()):
        p = r.percentiles
        line = f"  {n:10s} volume percentile {r.volume_percentile:5.1f}"
        if len(ls):
            pl = p[ls]
            cm = a.prepared.to_original(r.calibrated_map[ls])
            peak = max(float(c[les[i]].max()) for c, i in zip(cm, ls))
            line += (f"  >=95th: {int((pl >= 95).sum())}/{len(ls)}  median {np.nanmedian(pl):5.1f}  max {np.nanmax(pl):5.1f}"
                     f"  peak in lesion {peak:.2f} x thr")
        print(line)
