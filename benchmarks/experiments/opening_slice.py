"""Experiment: which slice should the viewer open a volume on? (validation volumes only)

The app opens a volume on one slice (``Analysis.most_anomalous_slice``). Up to session 10 that was
the highest mean healthy percentile over all methods, over every scored slice: on the test volumes
it lay inside the lesion for no method. Here each rule is judged on lesion volumes of cohorts built
with other seeds (the cohort's own generator, never its test split):

    for s in 1 2 3 4 5 6 7 8 9 10; do .venv/bin/python -m anomaly.data build --out /tmp/vols/s$s \\
        --seed $s --only test_volumes; done
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/opening_slice.py --cache runs/opening \\
        /tmp/vols/s{1,2,3,4,5,6,7,8,9,10}/test_volumes

Rules: one method's (or the mean of several methods') healthy percentile, ties broken by the
(mean) score, over the scored slices whose brain section is at least FRAC of the volume's largest
(FRAC 0 = every scored slice); "chance" = the share of candidate slices inside the lesion (what a
slice drawn at random among them would give). Results and the decision: README, "What these
numbers say"; the rule adopted is ``anomaly.analysis.OPENING_RULE``.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)
from anomaly.analysis import analyse  # noqa: E402
from anomaly.data.folder import read_folder, read_mask  # noqa: E402
from anomaly.io import load_scan  # noqa: E402
from anomaly.methods.base import available_methods, method_class  # noqa: E402

FRACS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7)


def collect(folders: list[Path], cache: Path) -> list[Path]:
    """Score every NIfTI volume once (all single-pass methods); per-slice figures cached as npz."""
    methods = [m for m in available_methods() if not method_class(m).on_demand]
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for root in folders:
        for item in read_folder(root):
            if not item.image_path.name.endswith((".nii", ".nii.gz")):
                continue
            dst = cache / f"{root.parent.name}_{item.image_path.name.split('.')[0]}.npz"
            out.append(dst)
            if dst.exists():
                continue
            scan = load_scan(item.image_path)
            lesion = read_mask(item.mask_path) if item.mask_path is not None else np.zeros(scan.shape, bool)
            a = analyse(scan, methods)
            np.savez(dst, lesion_px=lesion.reshape(len(lesion), -1).sum(1), valid=a.prepared.valid,
                     brain_px=a.prepared.original_masks.reshape(a.n_slices, -1).sum(1), methods=np.array(list(a.results)),
                     pct=np.stack([np.nan_to_num(r.percentiles, nan=0.0) for r in a.results.values()]),
                     scores=np.stack([r.scores for r in a.results.values()]))
            print(dst.name, flush=True)
    return out


def opening(pct: np.ndarray, scores: np.ndarray, cand: np.ndarray) -> int:
    """Highest percentile among candidates, ties by score (the app's rule for given rows)."""
    order = np.lexsort((scores, pct))
    return int(next(i for i in order[::-1] if cand[i]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--cache", type=Path, default=Path("runs/opening"))
    a = p.parse_args()
    vols = [np.load(f) for f in collect(a.folders, a.cache)]
    vols = [z for z in vols if (z["lesion_px"] > 0).any()]
    methods = list(vols[0]["methods"])
    rules = {"mean over all methods": methods, "consensus": ["consensus"], "ddad": ["ddad"],
             "ddad + consensus": ["ddad", "consensus"], "dae": ["dae"], "feature": ["feature"]}
    print(f"{len(vols)} lesion volumes")
    print("| Rule | " + " | ".join(f"FRAC {f}" for f in FRACS) + " |")
    print("|---|" + "---|" * len(FRACS))
    chance = []
    for f in FRACS:
        cs = []
        for z in vols:
            cand = z["valid"] & (z["brain_px"] >= f * z["brain_px"].max())
            cs.append(float(((z["lesion_px"] > 0) & cand).sum() / cand.sum()))
        chance.append(np.mean(cs))
    for name, ms in rules.items():
        cells = []
        for f in FRACS:
            hits = 0
            for z in vols:
                idx = [list(z["methods"]).index(m) for m in ms]
                cand = z["valid"] & (z["brain_px"] >= f * z["brain_px"].max())
                top = opening(z["pct"][idx].mean(0), z["scores"][idx].mean(0), cand)
                hits += bool(z["lesion_px"][top] > 0)
            cells.append(f"{hits}/{len(vols)}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| chance | " + " | ".join(f"{c:.0%}" for c in chance) + " |")


if __name__ == "__main__":
    main()
