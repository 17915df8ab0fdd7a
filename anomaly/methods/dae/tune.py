"""Compare a few coarse-noise settings of the DAE on ``val_lesion`` (pixel AP), never on test.

    python -m anomaly.methods.dae.tune --data data/cohort --out /tmp/dae_tune --minutes 4 \\
        --settings 8:0.2 16:0.2 32:0.2

Each setting ``RES:STD`` is a short ``anomaly.train`` run (same seed, same budget) into
``OUT/rRES_sSTD``; the card's validation block gives val_lesion pixel AP / image AUROC.
``anomaly.train`` reads only train/, val_normal/ and val_lesion/, so test/ is never touched.
A summary table is printed and written to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from anomaly.training import TrainConfig


@contextmanager
def _noise_env(res: int, std: float):
    old = {k: os.environ.get(k) for k in ("ANOMALY_DAE_NOISE_RES", "ANOMALY_DAE_NOISE_STD")}
    os.environ["ANOMALY_DAE_NOISE_RES"], os.environ["ANOMALY_DAE_NOISE_STD"] = str(res), str(std)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def parse_setting(s: str) -> tuple[int, float]:
    res, std = s.split(":")
    return int(res), float(std)


def tune(data: Path, out: Path, settings: list[tuple[int, float]], cfg: TrainConfig) -> list[dict]:
    """Train one DAE per (noise_res, noise_std); returns one row per setting, best pixel AP first."""
    from anomaly.train import train

    if not (Path(data) / "val_lesion").is_dir():
        raise SystemExit(f"{data} has no val_lesion/ split: tuning needs it (and never uses test/)")
    rows = []
    for res, std in settings:
        d = Path(out) / f"r{res}_s{std:g}"
        with _noise_env(res, std):
            card = train("dae", data, d, cfg, command=f"ANOMALY_DAE_NOISE_RES={res} ANOMALY_DAE_NOISE_STD={std} "
                         f"python -m anomaly.train dae --data {data} --out {d} --minutes {cfg.minutes} --seed {cfg.seed}")
        v = card.get("validation", {})
        rows.append({"noise_res": res, "noise_std": std, "out": str(d), "train_steps": card.get("train_steps"),
                     "final_loss": card.get("final_loss"), "val_lesion_pixel_ap": v.get("val_lesion_pixel_ap"),
                     "val_lesion_image_auroc": v.get("val_lesion_image_auroc"), "ms_per_slice": v.get("ms_per_slice")})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    rows.sort(key=lambda r: -(r["val_lesion_pixel_ap"] or 0.0))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "summary.json").write_text(json.dumps(rows, indent=2))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anomaly.methods.dae.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="scratch folder (not checkpoints/)")
    p.add_argument("--settings", nargs="+", default=["8:0.2", "16:0.2", "32:0.2"], help="RES:STD ...")
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from anomaly.training import set_threads

    set_threads()
    cfg = TrainConfig(seed=a.seed, minutes=a.minutes, max_steps=a.steps, batch_size=a.batch_size)
    rows = tune(a.data, a.out, [parse_setting(s) for s in a.settings], cfg)
    print(f"{'res':>4} {'std':>5} {'steps':>6} {'pixel AP':>9} {'img AUROC':>9}")
    for r in rows:
        ap, au = r["val_lesion_pixel_ap"], r["val_lesion_image_auroc"]
        print(f"{r['noise_res']:>4} {r['noise_std']:>5g} {r['train_steps']:>6} "
              f"{ap if ap is None else f'{ap:.4f}':>9} {au if au is None else f'{au:.4f}':>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
