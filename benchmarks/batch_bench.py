"""Batch scoring speed: studies/hour in-process vs Ray Data with 1 and 2 workers (printed, not asserted).

    python benchmarks/batch_bench.py [--cohort DIR] [--volumes 8 --slices 20] [--methods all] [--workers 1,2]

Without ``--cohort`` it writes a synthetic cohort of NIfTI sub-volumes of the MNI template
(``--volumes`` x ``--slices`` slices; >= 100 slices in all by default). Each Ray run writes into a
fresh results folder, so nothing is skipped. "Ray overhead" = Ray wall time x workers / in-process
wall time (1.0 = perfect scaling; above 1 is start-up, scheduling and serialisation).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_cohort(out: Path, volumes: int, slices: int) -> Path:
    import numpy as np

    from anomaly.data.folder import read_image, write_image

    v = read_image(ROOT / "assets" / "templates" / "mni152_2009a_t1_1mm.nii.gz")[::2, ::2, ::2]
    rng = np.random.default_rng(0)
    for i in range(volumes):
        start = min(20 + 2 * i, len(v) - slices)
        write_image(out, f"vol{i:03d}", v[start : start + slices] * rng.uniform(0.9, 1.1), spacing=(2.0, 2.0, 2.0))
    return out / "images"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", type=Path, default=None)
    p.add_argument("--volumes", type=int, default=8)
    p.add_argument("--slices", type=int, default=20)
    p.add_argument("--methods", default="all")
    p.add_argument("--checkpoints", type=Path, default=None)
    p.add_argument("--workers", default="1,2", help="comma list of Ray worker counts")
    a = p.parse_args(argv)
    os.environ.setdefault("ANOMALY_THREADS", "1")
    import pandas as pd
    import torch

    from anomaly.batch import discover, read_results
    from anomaly.batch.__main__ import resolve
    from anomaly.batch.pipeline import run_batch
    from anomaly.batch.scorer import StudyScorer

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="batch_bench_"))
    cohort = a.cohort or synthetic_cohort(tmp / "cohort", a.volumes, a.slices)
    items = discover(cohort)
    methods = resolve(a.methods, a.checkpoints)
    root = str(a.checkpoints) if a.checkpoints else None
    print(f"{len(items)} studies from {cohort}; methods: {', '.join(methods)}; 1 torch thread per worker")

    t0 = time.perf_counter()
    scorer = StudyScorer(methods, root, maps_out=str(tmp / "inproc"))  # maps stored, as the Ray runs do
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = scorer(pd.DataFrame(items))
    t_in = time.perf_counter() - t0
    slices = sum(table.column("n_slices").to_pylist()[i] or 0 for i in range(table.num_rows))
    rows = [("in-process (1 worker, checkpoints loaded once)", 1, t_in, t_in)]
    mb = sum(p.stat().st_size for p in (tmp / "inproc" / "maps").glob("*.npz")) / 1e6
    print(f"stored maps: {mb:.1f} MB in all, {1000 * mb / max(slices, 1):.0f} KB/slice")
    print(f"checkpoint loading {t_load:.1f} s (not counted); {slices} slices scored; "
          f"{1000 * t_in / max(slices, 1):.1f} ms/slice, {t_in / max(len(items), 1):.2f} s/study in-process")
    for w in [int(x) for x in a.workers.split(",") if x.strip()]:
        s = run_batch(items, methods, tmp / f"ray{w}", workers=w, checkpoint_root=a.checkpoints, progress=False)
        busy = float(read_results(tmp / f"ray{w}")["seconds_total"].sum())
        rows.append((f"Ray Data, {w} worker(s) (start-up included)", w, s.seconds, busy))
    print(f"\n{'run':<50} {'wall s':>8} {'studies/h':>10} {'overhead':>9} {'scoring s':>10}")
    for name, w, secs, busy in rows:
        print(f"{name:<50} {secs:8.1f} {3600 * len(items) / secs:10.0f} {secs * w / t_in:9.2f} {busy:10.1f}")
    print("overhead = wall x workers / in-process wall; scoring s = sum of the studies' own scoring time "
          "(wall - scoring s / workers ~ Ray start-up and scheduling)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
