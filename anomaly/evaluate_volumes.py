"""``python -m anomaly.evaluate_volumes``: volume-level figures on a folder of 3D volumes.

For each NIfTI volume (with or without a 3D lesion mask): every method scores every axial
slice through the one scoring path (``anomaly.analysis.analyse``); the volume score is the
contract's ``volume_score`` (max over scored slices). Reports, per method, volume AUROC
(lesion volumes vs healthy ones) and whether the method's highest-scoring slice lies inside the
lesion; and whether the slice the app opens on (``Analysis.most_anomalous_slice``, rule
``anomaly.analysis.OPENING_RULE``) does, beside what a slice drawn at random from the same
candidate slices would do (chance). Writes OUT/volumes.json and OUT/volumes.md.

A volume's label: from its mask if it has one (a lesion voxel -> lesion volume), else from
labels.csv, else healthy (a folder of healthy volumes needs neither masks nor labels.csv). ``--methods all`` is every single-pass method with a
checkpoint: the diffusion model runs on demand in the app and is left out unless named.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from anomaly import metrics as M
from anomaly.analysis import OPENING_RULE, analyse
from anomaly.data.folder import read_folder, read_mask
from anomaly.errors import AnomalyError, DatasetError
from anomaly.evaluate import _jsonable
from anomaly.io import load_scan
from anomaly.methods.base import method_class, resolve_methods


def evaluate_volumes(data_dir, methods: list[str], checkpoint_root: Path | None = None) -> dict:
    items = [i for i in read_folder(Path(data_dir)) if i.image_path.name.lower().endswith((".nii", ".nii.gz"))]
    if not items:
        raise DatasetError(f"{data_dir}: no NIfTI volumes in images/")
    rows = []
    for item in items:
        scan = load_scan(item.image_path)
        lesion = read_mask(item.mask_path) if item.mask_path is not None else np.zeros(scan.shape, bool)
        if lesion.shape != scan.shape:
            raise DatasetError(f"mask {item.mask_path} does not match volume {item.image_path} ({lesion.shape} vs {scan.shape})")
        lesion_slices = set(np.nonzero(lesion.reshape(len(lesion), -1).any(1))[0].tolist())
        if item.mask_path is not None:
            label = int(bool(lesion_slices))
        else:
            label = item.label if item.label is not None else 0  # labels.csv, else healthy
        a = analyse(scan, methods, checkpoint_root=checkpoint_root)
        row = {"file": item.image_path.name, "label": label, "n_slices": a.n_slices,
               "lesion_slices": [min(lesion_slices), max(lesion_slices)] if lesion_slices else None, "methods": {}}
        for name, r in a.results.items():
            top = r.most_anomalous_slice
            row["methods"][name] = {"volume_score": r.volume_score, "top_slice": top,
                                    "top_slice_in_lesion": (top in lesion_slices) if lesion_slices else None}
        opening = a.most_anomalous_slice()
        cand = np.nonzero(a.opening_candidates())[0]
        row["app"] = {"opening_slice": opening,
                      "opening_slice_in_lesion": (opening in lesion_slices) if lesion_slices else None,
                      "chance": (float(np.mean([c in lesion_slices for c in cand])) if lesion_slices and len(cand) else None)}
        rows.append(row)
    labels = np.array([r["label"] for r in rows])  # every volume has one (mask, labels.csv, else healthy)
    out = {"schema_version": 1, "data": str(data_dir), "n_volumes": len(rows), "n_lesion_volumes": int((labels == 1).sum()),
           "volume_score": "max over scored slices (anomaly.calibration.volume_score)", "methods": {}, "volumes": rows}
    for name in methods:
        scores = np.array([r["methods"][name]["volume_score"] for r in rows])
        hits = [r["methods"][name]["top_slice_in_lesion"] for r in rows if r["label"] == 1 and r["lesion_slices"]]
        auroc = M.image_auroc(labels, scores)  # NaN with one class only
        out["methods"][name] = {"volume_auroc": auroc if np.isfinite(auroc) else None,
                                "top_slice_in_lesion": float(np.mean(hits)) if hits else None}
    les = [r["app"] for r in rows if r["label"] == 1 and r["lesion_slices"]]  # lesion volumes with a mask
    out["app"] = {"opening_slice_in_lesion": float(np.mean([x["opening_slice_in_lesion"] for x in les])) if les else None,
                  "chance": float(np.mean([x["chance"] for x in les])) if les else None,
                  "rule": OPENING_RULE}
    return out


def markdown(res: dict) -> str:
    lines = [f"# Volume-level evaluation on `{res['data']}`", "",
             f"{res['n_volumes']} volumes ({res['n_lesion_volumes']} with a lesion). Volume score: {res['volume_score']}.", "",
             "| Method | Volume AUROC | Top slice inside the lesion |", "|---|---|---|"]
    for n, m in res["methods"].items():
        au = "n/a" if m["volume_auroc"] is None or not np.isfinite(m["volume_auroc"]) else f"{m['volume_auroc']:.3f}"
        tl = "n/a" if m["top_slice_in_lesion"] is None else f"{m['top_slice_in_lesion']:.0%}"
        lines.append(f"| {n} | {au} | {tl} |")
    app = res.get("app") or {}
    if app.get("opening_slice_in_lesion") is not None:
        lines += ["", f"The slice the app opens on ({app['rule']}) lies inside the lesion in "
                      f"{app['opening_slice_in_lesion']:.0%} of the lesion volumes; a slice drawn at random from the "
                      f"same candidate slices would in {app['chance']:.0%}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m anomaly.evaluate_volumes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path,
                   help="data-set folder whose images/ holds NIfTI volumes (optional masks/ and labels.csv)")
    p.add_argument("--methods", default="all",
                   help="'all' (every single-pass method with a checkpoint) or NAME[,NAME] (anoddpm only if named)")
    p.add_argument("--out", required=True, type=Path, help="output folder for volumes.json and volumes.md")
    p.add_argument("--checkpoints", type=Path, default=None, help="checkpoint root (default checkpoints/)")
    a = p.parse_args(argv)
    try:
        if a.out.exists() and not a.out.is_dir():
            raise AnomalyError(f"output path {a.out} exists and is not a folder")
        names = resolve_methods(a.methods, a.checkpoints)
        if a.methods.strip().lower() == "all":
            names = [n for n in names if not method_class(n).on_demand]
        res = evaluate_volumes(a.data, names, a.checkpoints)
        a.out.mkdir(parents=True, exist_ok=True)
    except (AnomalyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(_jsonable(res), indent=2, allow_nan=False)  # NaN -> null: strict JSON
    (a.out / "volumes.json").write_text(text)
    (a.out / "volumes.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
