"""Experiment: in which order should the findings list put the methods' 3D findings? (validation volumes only)

The app lists every shown method's findings (connected regions above the healthy threshold) in one
table (``Analysis.findings_across``). A browser audit found the bundled haemorrhage example's lesion
third, under two findings at the skull base flagged by many methods. Each rule below is judged on
lesion volumes of cohorts built with other seeds than the test split's (as
``opening_slice.py``):

    for s in 1 2 3 4 5 6 7 8 9 10; do .venv/bin/python -m anomaly.data build --out /tmp/vols/s$s \\
        --seed $s --only test_volumes; done
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/findings_order.py --cache runs/findings_order \\
        /tmp/vols/s{1,2,3,4,5,6,7,8,9,10}/test_volumes

Per volume, every finding of every single-pass method at threshold 1 (at least 10 voxels, as the
app) is recorded with its peak, brain section (the opening slice's rule), how many other methods
flag part of it, its method's validation pixel AP (the card's) and whether it overlaps the lesion.
Figures: the volumes whose first finding lies in the lesion, those with one in the first three,
and the mean reciprocal rank of the first lesion finding.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

torch.set_num_threads(2)
from anomaly.analysis import analyse  # noqa: E402
from anomaly.data.folder import read_folder, read_mask  # noqa: E402
from anomaly.io import load_scan  # noqa: E402
from anomaly.methods.base import available_methods, method_class  # noqa: E402
from anomaly.ui.callbacks import validation_rank  # noqa: E402


def volume_findings(a, lesion: np.ndarray, threshold: float = 1.0, min_voxels: int = 10) -> list[dict]:
    """Every method's findings of analysis ``a`` with what the rules need, and whether each is in the lesion."""
    regions = {m: a._regions(m, threshold) for m in a.results}
    large = a.opening_candidates()
    out = []
    for m, region in regions.items():
        lab, n = ndimage.label(region)
        peaks = ndimage.maximum(a.full_map(m), lab, np.arange(1, n + 1)) if n else []
        for k, peak in zip(range(1, n + 1), peaks):
            comp = lab == k
            if comp.sum() < min_voxels:
                continue
            zc = int(round(np.nonzero(comp)[0].mean()))
            out.append({"method": m, "peak": float(peak), "large": bool(large[zc]),
                        "agree": sum(bool((r & comp).any()) for o, r in regions.items() if o != m),
                        "val_ap": -validation_rank(m)[0], "voxels": int(comp.sum()),
                        "in_lesion": bool((comp & lesion).any())})
    return out


def collect(folders: list[Path], cache: Path) -> list[list[dict]]:
    methods = [m for m in available_methods() if not method_class(m).on_demand]
    cache.mkdir(parents=True, exist_ok=True)
    vols = []
    for root in folders:
        for item in read_folder(root):
            if not item.image_path.name.endswith((".nii", ".nii.gz")) or item.mask_path is None:
                continue
            dst = cache / f"{root.parent.name}_{item.image_path.name.split('.')[0]}.json"
            if not dst.exists():
                scan = load_scan(item.image_path)
                lesion = read_mask(item.mask_path).astype(bool)
                if not lesion.any():
                    continue
                a = analyse(scan, methods)
                dst.write_text(json.dumps(volume_findings(a, lesion)))
                print(dst.name, flush=True)
            vols.append(json.loads(dst.read_text()))
    return vols


RULES = {
    "peak": lambda f: (-f["peak"],),
    "section, peak (app until session 14)": lambda f: (not f["large"], -f["peak"]),
    "section, agreement, peak": lambda f: (not f["large"], -f["agree"], -f["peak"]),
    "section, method's validation AP, peak": lambda f: (not f["large"], -f["val_ap"], -f["peak"]),
    "section, peak x method's validation AP": lambda f: (not f["large"], -f["peak"] * f["val_ap"]),
    "section, peak x (1 + agreement)": lambda f: (not f["large"], -f["peak"] * (1 + f["agree"])),
    "section, size": lambda f: (not f["large"], -f["voxels"]),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--cache", type=Path, default=Path("runs/findings_order"))
    a = p.parse_args()
    vols = [v for v in collect(a.folders, a.cache) if v]
    print(f"{len(vols)} lesion volumes; findings per volume: median {int(np.median([len(v) for v in vols]))}; "
          f"volumes with any finding in the lesion: {sum(any(f['in_lesion'] for f in v) for v in vols)}")
    print("| Rule | first finding in the lesion | one of the first three | mean reciprocal rank |")
    print("|---|---|---|---|")
    for name, key in RULES.items():
        top1 = top3 = 0
        rr = []
        for v in vols:
            hits = [f["in_lesion"] for f in sorted(v, key=key)]
            top1 += hits[0]
            top3 += any(hits[:3])
            rr.append(1.0 / (hits.index(True) + 1) if True in hits else 0.0)
        print(f"| {name} | {top1}/{len(vols)} | {top3}/{len(vols)} | {np.mean(rr):.3f} |")


if __name__ == "__main__":
    main()
