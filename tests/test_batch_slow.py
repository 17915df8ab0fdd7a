"""Batch scoring end to end through the CLI: on a two-node Ray cluster via --address, and a run
killed with SIGKILL then resumed (every study exactly once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from anomaly.batch import discover, read_results
from tests.test_batch import make_cohort

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[1]


def cli(args: list[str], env_extra: dict | None = None, **kw) -> subprocess.Popen:
    env = dict(os.environ, ANOMALY_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env_extra or {}))
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "anomaly.batch", "--no-progress", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session the CLI started: the driver and all its Ray processes
    (Ray workers have process groups of their own, but stay in the session)."""
    for _ in range(50):
        ps = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout.split("\n")
        pids = [int(f[0]) for f in (line.split() for line in ps) if len(f) == 3 and int(f[1]) == sid
                and not f[2].startswith("Z")]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def readable_rows(out: Path) -> list[str]:
    """Content hashes of every row of every readable part (no de-duplication)."""
    hashes = []
    for p in out.glob("*.parquet"):
        try:
            hashes += pq.read_table(p, columns=["content_hash"]).column(0).to_pylist()
        except Exception:  # noqa: BLE001 - a part cut short by the kill
            pass
    return hashes


def test_two_node_cluster_via_address(tmp_path, tiny_checkpoints):
    from ray.cluster_utils import Cluster

    cohort = make_cohort(tmp_path / "cohort", n_volumes=2, extras=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "results"
        p = cli(["--input", str(cohort), "--methods", "zscore,ae", "--out", str(out), "--checkpoints",
                 str(tiny_checkpoints), "--address", cluster.address])
        log, _ = p.communicate(timeout=400)
        assert p.returncode == 0, log[-3000:]
    finally:
        cluster.shutdown()
    df = read_results(out)
    assert len(df) == 2 and (df["status"] == "ok").all()


def test_killed_run_resumes_each_study_once(tmp_path, tiny_checkpoints):
    cohort = make_cohort(tmp_path / "cohort", n_volumes=8, n_slices=40, extras=False)
    n = len(discover(cohort))
    out = tmp_path / "results"
    args = ["--input", str(cohort), "--methods", "zscore,ae", "--out", str(out), "--checkpoints",
            str(tiny_checkpoints), "--workers", "1"]
    p = cli(args, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list(out.glob("*.parquet")) and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert p.poll() is None, p.stdout.read()[-3000:]
    finally:
        kill_session(p.pid)  # the driver and the Ray processes it started, mid-run
        p.wait(timeout=60)
    first = len(readable_rows(out))
    assert 1 <= first < n
    q = cli(args)
    log, _ = q.communicate(timeout=400)
    assert q.returncode == 0, log[-3000:]
    hashes = readable_rows(out)
    assert len(hashes) == len(set(hashes)) == n  # every study exactly once
    assert f"{first} skipped" in log, log[-400:]  # the rerun scored only what the killed run had not
    assert len(read_results(out)) == n


def test_the_local_default_starts_its_own_ray_beside_a_stale_cluster_file(tmp_path, tiny_checkpoints):
    """No --address: Ray starts locally even where a `ray start --head` left its cluster file behind
    (ray.init without an address joined it and refused num_cpus with a traceback)."""
    import shutil
    import tempfile

    # Ray's temp folder of this test only (RAY_TMPDIR), not the machine's /tmp/ray; short, as Ray's
    # socket paths must stay under 108 bytes
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:6399")
        (ray_tmp / "ray_current_cluster").write_text("127.0.0.1:6399")
        cohort = make_cohort(tmp_path / "cohort", n_volumes=1, extras=False)
        out = tmp_path / "results"
        p = cli(["--input", str(cohort), "--methods", "zscore", "--out", str(out), "--checkpoints",
                 str(tiny_checkpoints), "--workers", "1"], env_extra={"RAY_TMPDIR": str(ray_tmp)})
        log, _ = p.communicate(timeout=400)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0 and "Traceback" not in log, log[-3000:]
    assert (read_results(out)["status"] == "ok").all()
