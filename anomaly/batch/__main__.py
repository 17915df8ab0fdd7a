"""``python -m anomaly.batch --input DIR_OR_MANIFEST --methods all --out RESULTS_DIR [--address ADDR] [--workers N]``

Scores every study of a folder (DICOM series, NIfTI volumes, PNG/JPEG slices) or of a CSV
manifest (``path`` column) with Ray Data, through the app's scoring path, into Parquet parts
under RESULTS_DIR. Re-running with the same RESULTS_DIR skips the studies already scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomaly.errors import AnomalyError


def resolve(spec: str, checkpoint_root: Path | None, include_on_demand: bool = False) -> list[str]:
    """``--methods``: ``all`` leaves out on-demand (slow, per-slice) methods unless asked."""
    from anomaly.methods.base import method_class, resolve_methods

    names = resolve_methods(spec, checkpoint_root)
    if spec.strip().lower() == "all" and not include_on_demand:
        names = [n for n in names if not method_class(n).on_demand]
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m anomaly.batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, type=Path, help="cohort folder, CSV manifest (path column) or one file")
    p.add_argument("--methods", default="all", help="'all' (methods with a checkpoint) or a comma list")
    p.add_argument("--out", required=True, type=Path, help="results folder (Parquet parts)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local Ray)")
    p.add_argument("--workers", type=int, default=None, help="scoring actors (default: every CPU)")
    p.add_argument("--checkpoints", type=Path, default=None, help="checkpoint root (default: $ANOMALY_CHECKPOINTS)")
    p.add_argument("--plane", default="axial", choices=["axial", "coronal", "sagittal"])
    p.add_argument("--studies-per-part", type=int, default=1, help="studies per Parquet part (resume granularity)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per actor")
    p.add_argument("--include-on-demand", action="store_true", help="with --methods all, also run slow methods (anoddpm)")
    p.add_argument("--retry-failed", action="store_true", help="score again the studies that failed before")
    p.add_argument("--no-maps", action="store_true",
                   help="do not store maps (~60-70 KB per slice); the worklist then re-scores a study it opens")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from anomaly.batch.discovery import discover
    from anomaly.batch.pipeline import run_batch

    try:
        methods = resolve(a.methods, a.checkpoints, a.include_on_demand)
        if not methods:
            raise AnomalyError("no method with a checkpoint: train one first (python -m anomaly.train)")
        items = discover(a.input)
        print(f"{len(items)} studies found; methods: {', '.join(methods)}", file=sys.stderr)
        s = run_batch(items, methods, a.out, address=a.address, workers=a.workers, checkpoint_root=a.checkpoints,
                      plane=a.plane, studies_per_part=a.studies_per_part, threads=a.threads,
                      retry_failed=a.retry_failed, progress=not a.no_progress,
                      store_maps=not a.no_maps)
    except AnomalyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {s.ok} ok, {s.failed} failed, {s.skipped} skipped (already scored), "
          f"{s.seconds:.1f} s, {s.per_hour:.0f} studies/hour -> {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
