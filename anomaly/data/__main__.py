"""CLI: ``python -m anomaly.data build|examples|verify`` (see docs/data.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m anomaly.data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the pseudo-subject cohort with synthetic lesions")
    b.add_argument("--out", required=True, help="output folder (known split sub-folders are replaced)")
    b.add_argument("--subjects", type=int, default=36, help="training pseudo-subjects (default 36)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--heldout", choices=("colin27", "mni152"), default="colin27",
                   help="real brain held out for test_heldout (train_loo/val_normal_loo exclude it)")
    b.add_argument("--tiny", action="store_true", help="a very small build on a 3 mm grid (tests)")
    b.add_argument("--workers", type=int, default=None, help="processes (default: 2, or 1 with --tiny)")
    b.add_argument("--only", nargs="+", default=None, metavar="SPLIT", help="build only these splits")
    e = sub.add_parser("examples", help="write the small example files (assets/examples)")
    e.add_argument("--out", default="assets/examples")
    e.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("verify", help="compare a built test split with the one the README's figures were measured on")
    v.add_argument("--data", default="data/cohort", help="cohort folder (its test/ split is compared)")
    v.add_argument("--reference", default=None, help="reference CSV (default docs/benchmark/test_scores.csv)")
    a = p.parse_args(argv)
    if a.cmd == "verify":
        from pathlib import Path

        from anomaly.data.verify import REFERENCE, compare_split
        from anomaly.errors import AnomalyError

        try:
            cmp = compare_split(Path(a.data) / "test", a.reference or REFERENCE)
        except AnomalyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{Path(a.data) / 'test'}: {cmp.report()}")
        return 0 if cmp.identical else 1

    import torch

    if a.cmd == "build":
        from anomaly.data.build import build

        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        t0 = time.time()
        m = build(a.out, seed=a.seed, subjects=a.subjects, heldout=a.heldout, tiny=a.tiny, workers=a.workers,
                  only=a.only)
        print(f"cohort written to {a.out} in {time.time() - t0:.0f} s")
        for s, c in m["splits"].items():
            print(f"  {s:18s} {c['files']:5d} files  {c['lesion']:4d} lesion  {c['normal']:4d} normal  "
                  f"{c['subjects']:3d} subjects")
        print(m["statement"])
        return 0
    if a.cmd == "examples":
        from anomaly.data.build import write_examples

        files = write_examples(a.out, seed=a.seed)
        print(json.dumps([str(f) for f in files], indent=2))
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
