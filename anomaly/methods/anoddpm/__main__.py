"""``python -m anomaly.methods.anoddpm tune --ckpt checkpoints/anoddpm --data data/cohort [--write]``

Tunes AnoDDPM's test-time settings (noise level ``t_start``, noise kind, THOR-style
guidance) of a trained checkpoint on the ``val_lesion`` split (never on test): each
combination is scored through the shared scoring path; the best by pixel AP (ties: image
AUROC) is reported. With ``--write`` it is stored in the card's ``inference``, and since
the maps change, the calibration is recomputed on ``val_normal`` and the card's
validation figures are refreshed (the weights and their hash are untouched).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from anomaly.errors import AnomalyError


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def tune(ckpt: Path, data: Path, t_starts, guidances, noises, n_steps: int | None = None, seed: int = 0,
         max_slices: int | None = None, write: bool = False, log=print, n_samples: int | None = None,
         train_split: str = "train", val_split: str = "val_normal") -> dict:
    from anomaly.checkpoints import load_card, write_card
    from anomaly.methods.base import clear_cache, get_method
    from anomaly.train import load_training_data, train, validation_figures
    from anomaly.training import TrainConfig

    _, _, val_lesion = load_training_data(Path(data), train_split, val_split)
    if val_lesion is None:
        raise AnomalyError(f"{data} has no val_lesion split to tune on")
    if max_slices and len(val_lesion) > max_slices:
        import numpy as np

        val_lesion = val_lesion.subset(np.sort(np.random.default_rng(seed).choice(len(val_lesion), max_slices, replace=False)))
    clear_cache()
    m = get_method("anoddpm", ckpt)
    base = dict(m.inference)
    rows = []
    for t, g, nz in itertools.product(t_starts, guidances, noises):
        m.inference = {**base, "t_start": int(t), "guidance": float(g), "noise": nz,
                       **({"n_steps": int(n_steps)} if n_steps else {}),
                       **({"n_samples": int(n_samples)} if n_samples else {})}
        t0 = time.perf_counter()
        fig = validation_figures(m, val_lesion, seed)
        row = {"t_start": int(t), "guidance": float(g), "noise": nz, "n_steps": m.inference["n_steps"],
               "n_samples": m.inference["n_samples"],
               "pixel_ap": fig.get("val_lesion_pixel_ap"), "image_auroc": fig.get("val_lesion_image_auroc"),
               "s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        log(json.dumps(row))
    best = max(rows, key=lambda r: (r["pixel_ap"] or 0.0, r["image_auroc"] or 0.0))
    out = {"tried": rows, "best": best}
    if write:
        card = load_card(ckpt)
        card["inference"] = {**base, **{k: best[k] for k in ("t_start", "guidance", "noise", "n_steps", "n_samples")}}
        card["inference_tuning"] = {"split": "val_lesion", "slices": len(val_lesion), "criterion": "pixel AP",
                                    "tried": rows}
        write_card(ckpt, card)
        clear_cache()
        # re-calibrate and re-validate with the tuned settings: the training's own --calibrate-only step
        train("anoddpm", Path(data), Path(ckpt), TrainConfig(seed=seed, device="cpu"), train_split=train_split,
              val_split=val_split, calibrate_only=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anomaly.methods.anoddpm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tune", help="tune t_start / noise / guidance on val_lesion")
    t.add_argument("--ckpt", type=Path, default=Path("checkpoints/anoddpm"))
    t.add_argument("--data", type=Path, required=True, help="data-set folder with val_lesion/ and val_normal/")
    t.add_argument("--t-start", default="10,25,40,100,250", help="comma list of noise levels (of 1000)")
    t.add_argument("--guidance", default="0", help="comma list of THOR guidance tolerances (0 = off)")
    t.add_argument("--noise", default="simplex", help="comma list: simplex,gaussian")
    t.add_argument("--n-steps", type=int, default=None, help="DDIM steps (<= 20; default: the card's)")
    t.add_argument("--n-samples", type=int, default=None,
                   help="noise draws per slice, averaged (their spread is the uncertainty map; default: the card's)")
    t.add_argument("--max-slices", type=int, default=None, help="random subset of val_lesion (speed)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-split", default="train", help="sub-folder of DATA the model was trained on")
    t.add_argument("--val-split", default="val_normal", help="healthy sub-folder of DATA to re-calibrate on (--write)")
    t.add_argument("--write", action="store_true", help="store the best in the card and recalibrate")
    a = p.parse_args(argv)
    try:
        out = tune(a.ckpt, a.data, _floats(a.t_start), _floats(a.guidance),
                   [s.strip() for s in a.noise.split(",") if s.strip()], a.n_steps, a.seed, a.max_slices, a.write,
                   n_samples=a.n_samples, train_split=a.train_split, val_split=a.val_split)
    except (AnomalyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("best:", json.dumps(out["best"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
