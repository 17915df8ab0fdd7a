"""Crash safety: a writer killed with SIGKILL mid-stream never loses an acknowledged flag.

A subprocess adds flags in a tight loop and prints each id once ``add_flag`` has returned (the
commit is durable: WAL + synchronous=FULL). The test kills it at several points, then checks that
the database passes ``PRAGMA integrity_check`` and holds every acknowledged flag exactly once, and
that a new writer can carry on. A second test kills writers while other writers keep going.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomaly.annotations.store import Store

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]

WRITER = r"""
import sys
from anomaly.annotations.store import Store
db, tag = sys.argv[1], sys.argv[2]
s = Store(db, read_only=False)
print("ready", flush=True)
i = 0
while True:
    f = s.add_flag(study_key="sk-" + "0" * 20, plane="axial", slice_index=i % 20, shape=(128, 128), n_slices=20,
                   method="ae", label="false_positive", reason="noise", reviewer=tag, box=[i % 50, 3, 60 + i % 50, 90],
                   note=f"{tag}-{i}", checkpoint_hash="0123456789abcdef", threshold=1.0)
    if i % 7 == 3:  # edits and removals in the mix, so that kills also land in those transactions
        f = s.update_flag(f.id, f.version, reviewer=tag, note=f"{tag}-{i}-edited")
    print(f.id, flush=True)
    i += 1
"""


def _start(db: Path, tag: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", WRITER, str(db), tag], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)


def _read_acks(p: subprocess.Popen, n: int, wait_ready: bool = True) -> list[str]:
    """Reads ``n`` acknowledged ids (the process keeps writing); the module timeout guards a stall."""
    if wait_ready:
        line = p.stdout.readline()
        assert line.strip() == "ready", line + p.stderr.read()
    acks: list[str] = []
    while len(acks) < n:
        line = p.stdout.readline()
        if not line:
            raise AssertionError("writer died: " + p.stderr.read())
        acks.append(line.strip())
    return acks


def _kill(p: subprocess.Popen) -> list[str]:
    """SIGKILL, then collect the ids it had printed (acknowledged) before dying."""
    os.kill(p.pid, signal.SIGKILL)
    rest, _ = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    # a kill can land in the middle of printing an id: a cut-off line was never acknowledged
    return [x.strip() for x in rest.splitlines() if len(x.strip()) == 36]


def _check(db: Path, acked: list[str]) -> Store:
    s = Store(db)
    assert s.integrity_check() == "ok"
    stored = {f.id: f for f in s.list_flags(include_deleted=True)}
    missing = [a for a in acked if a not in stored]
    assert not missing, f"{len(missing)} acknowledged flags lost"
    ids = [r[0] for r in s._conn().execute("SELECT id FROM flags").fetchall()]
    assert len(ids) == len(set(ids))
    assert not s._conn().execute("SELECT flag_id FROM flag_history WHERE flag_id NOT IN (SELECT id FROM flags)").fetchall()
    return s


def test_sigkilled_writer_loses_no_acknowledged_flag(tmp_path):
    db = tmp_path / "ann.sqlite"
    Store(db)
    acked: list[str] = []
    for round_, n in enumerate((15, 40, 25, 5, 60, 30)):
        p = _start(db, f"w{round_}")
        acked += _read_acks(p, n)
        time.sleep(0.007 * (round_ + 1))  # land the kill at different points of a transaction
        acked += _kill(p)
        s = _check(db, acked)
        assert len(acked) >= n
    # the database is fully usable afterwards
    f = s.add_flag(study_key="sk-" + "0" * 20, plane="axial", slice_index=0, shape=(8, 8), n_slices=1, method="ae",
                   label="missed_lesion", reviewer="after", box=[0, 0, 2, 2])
    assert s.get_flag(f.id).version == 1
    edited = [x for x in s.list_flags() if x.note.endswith("-edited")]
    assert edited and all(x.version == 2 for x in edited)


def test_kill_some_writers_while_others_continue(tmp_path):
    db = tmp_path / "ann.sqlite"
    Store(db)
    procs = [_start(db, f"p{i}") for i in range(4)]
    acked = []
    for p in procs:
        acked += _read_acks(p, 10)
    for p in procs[:2]:
        acked += _kill(p)
    for p in procs[2:]:
        acked += _read_acks(p, 10, wait_ready=False)
        acked += _kill(p)
    s = _check(db, acked)
    assert s.count_flags(include_deleted=True) >= len(set(acked))
