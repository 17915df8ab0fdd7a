"""The Ray Data pipeline: study items -> ``StudyScorer`` actors -> Parquet parts.

``ray.data.from_items`` of study items (paths, not volumes), ``map_batches`` with the
``StudyScorer`` class on an actor pool (each actor loads the checkpoints once), then
``write_parquet``: every block is its own part file, written as soon as it is scored, so a
killed run keeps its finished parts. Without an address (argument or ``RAY_ADDRESS``) Ray starts
locally with ``num_cpus=workers or os.cpu_count()``; with one it joins that cluster. Nothing else
differs.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from anomaly.batch.results import done_hashes, part_files, read_part
from anomaly.batch.scorer import StudyScorer
from anomaly.keys import study_salt


@dataclass
class RunSummary:
    studies: int  # studies found
    skipped: int  # already in the results (resume)
    ok: int
    failed: int
    seconds: float

    @property
    def per_hour(self) -> float:
        return 3600 * (self.ok + self.failed) / max(self.seconds, 1e-9)


def init_ray(address: str | None = None, workers: int | None = None) -> bool:
    """Start or join Ray; True when this call started it (then the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    from anomaly.errors import EngineStartError

    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {"env_vars": {k: os.environ[k] for k in ("ANOMALY_THREADS", "OMP_NUM_THREADS") if k in os.environ}}
    try:
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:  # "local": a Ray of its own, even where `ray start --head` left a cluster (live or stale) behind
            ray.init(address="local", num_cpus=workers or os.cpu_count(), include_dashboard=False, runtime_env=env,
                     log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError, ...
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise EngineStartError(f"could not start {where}: {' '.join(str(e).split())[:300]}") from None
    return True


class _Progress:
    """tqdm bar fed by the part files that appear in ``out`` (done / failed / per hour)."""

    def __init__(self, out: Path, total: int, enabled: bool = True):
        self.out, self.total, self.enabled = out, total, enabled
        self.seen = set(part_files(out))
        self.ok = self.failed = 0
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="study", dynamic_ncols=True)
        self._thread.start()
        return self

    def poll(self) -> None:
        for p in part_files(self.out):
            if p in self.seen:
                continue
            df = read_part(p, ["status"], warn=False)
            if df is None:  # still being written
                continue
            self.seen.add(p)
            ok = int((df["status"] == "ok").sum())
            self.ok += ok
            self.failed += len(df) - ok
            if self.enabled:
                hours = (time.perf_counter() - self.t0) / 3600
                self.bar.update(len(df))
                self.bar.set_postfix(done=self.ok, failed=self.failed, per_hour=f"{(self.ok + self.failed) / max(hours, 1e-9):.0f}")

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.poll()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()
        if self.enabled:
            self.bar.close()


def run_batch(items: list[dict], methods: list[str], out: Path | str, *, address: str | None = None,
              workers: int | None = None, checkpoint_root: Path | None = None, plane: str = "axial",
              studies_per_part: int = 1, threads: int = 1, retry_failed: bool = False,
              progress: bool = True, store_maps: bool = True) -> RunSummary:
    """Score ``items`` with ``methods`` into Parquet parts under ``out`` (and their maps under ``out/maps``
    unless ``store_maps`` is False); studies already there are skipped."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = done_hashes(out, retry_failed)
    started = init_ray(address, workers)
    try:
        DataContext.get_current().enable_progress_bars = False
        n_cpus = int(ray.cluster_resources().get("CPU", 1))
        size = max(1, min(workers or n_cpus, n_cpus, len(items) or 1))
        kwargs = dict(methods=list(methods), checkpoint_root=str(Path(checkpoint_root).resolve()) if checkpoint_root else None,
                      plane=plane, salt=study_salt(), done=frozenset(done), threads=threads,
                      maps_out=str(out) if store_maps else None)
        with _Progress(out, len(items), progress) as bar:
            if items:
                ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / studies_per_part)))
                ds = ds.map_batches(StudyScorer, fn_constructor_kwargs=kwargs, batch_size=studies_per_part,
                                    batch_format="pandas", compute=ActorPoolStrategy(size=size), num_cpus=1)
                ds.write_parquet(str(out), ray_remote_args={"num_cpus": 0})  # writing is light: no CPU slot held
    finally:
        if started:
            ray.shutdown()
    return RunSummary(len(items), len(items) - bar.ok - bar.failed, bar.ok, bar.failed, time.perf_counter() - t0)
