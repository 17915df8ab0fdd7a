"""``python -m anomaly.bench``: speed figures on this machine (printed, not asserted).

Targets (2 CPU cores): load + preprocess a 1 mm brain NIfTI (brain extraction included) < 2 s;
AE + baseline on a 128x128 slice < 30 ms; all single-pass methods per slice < 150 ms;
diffusion < 2 s per slice; a 180-slice volume with AE + baseline < 5 s and with all
single-pass methods < 20 s; changing slice in the app < 0.5 s (results cached per scan).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _t(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m anomaly.bench", description=__doc__)
    p.add_argument("--volume", type=Path, default=ROOT / "assets/templates/colin27_t1_1mm.nii.gz",
                   help="NIfTI volume to time (default: the bundled Colin27 1 mm T1); whole-volume targets "
                        "are for 180 slices and scaled to other slice counts")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the targets are for 2 CPU cores)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from anomaly.analysis import analyse, score_prepared
    from anomaly.io import load_scan
    from anomaly.methods.base import available_methods, get_method, method_class
    from anomaly.preprocess import preprocess_scan, preprocess_slices
    from anomaly.render import RenderConfig
    from anomaly.scoring import run_method

    rows = []

    def row(name, secs, target=None):
        rows.append((name, secs, target))
        ok = "" if target is None else ("  ok" if secs <= target else "  ABOVE TARGET")
        print(f"{name:<58} {secs * 1000:10.1f} ms" + (f"   (target {target * 1000:.0f} ms){ok}" if target else ""))

    print(f"torch threads: {torch.get_num_threads()}; volume: {a.volume.name}")
    scan = load_scan(a.volume)
    vox = " x ".join(f"{v:g}" for v in scan.spacing)
    # the volume targets are for 180 slices; another volume gets them scaled to its slice count
    per180 = scan.n_slices / 180
    scaled = "" if scan.n_slices == 180 else ", target scaled from 180 slices"
    row(f"load NIfTI ({vox} mm voxels)", _t(lambda: load_scan(a.volume), 2))
    row(f"load + preprocess all {scan.n_slices} axial slices", _t(lambda: preprocess_scan(load_scan(a.volume)), 2), 2.0)
    prep_vol = preprocess_scan(scan)
    mid = scan.n_slices // 2
    one = preprocess_slices(scan.voxels[mid : mid + 1])
    methods = available_methods()
    single = [m for m in methods if not method_class(m).on_demand]
    for m in methods:
        meth = get_method(m)
        meth.predict(one.images, one.masks)  # warm-up
        secs = _t(lambda: run_method(meth, one))
        row(f"{m}: one 128x128 slice (incl. post-processing)", secs, 2.0 if method_class(m).on_demand else None)
    if {"ae", "zscore"} <= set(methods):
        row("ae + zscore: one slice", sum(_t(lambda m=m: run_method(get_method(m), one)) for m in ("ae", "zscore")), 0.030)
        row(f"ae + zscore: whole volume ({scan.n_slices} slices, batched{scaled})",
            sum(_t(lambda m=m: run_method(get_method(m), prep_vol), 1) for m in ("ae", "zscore")), 5.0 * per180)
    if single:
        # as the app scores (anomaly.analysis.score_prepared: a consensus reuses its members' results)
        row(f"all single-pass methods ({', '.join(single)}): one slice",
            _t(lambda: score_prepared(one, single)), 0.150)
        row(f"all single-pass methods: whole volume ({scan.n_slices} slices{scaled})",
            _t(lambda: score_prepared(prep_vol, single), 1), 20.0 * per180)
        def first_view():  # what the page shows first: load, preprocess, score the middle slice, render it
            sc = load_scan(a.volume)
            analyse(sc, single, only=[mid]).render(mid, RenderConfig())

        row("app: first view of a volume (load, preprocess, middle slice, render)", _t(first_view, 2), 3.0)
        an = analyse(scan, single)
        cfg = RenderConfig()
        row("app: change slice (render cached results)", _t(lambda: an.render(mid + 5, cfg), 3), 0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
