"""The `selftest` and `export` commands of `python -m anomaly.annotations`."""

from __future__ import annotations

import csv
import json

import pytest

from anomaly.annotations.__main__ import main
from anomaly.annotations.store import Store

pytestmark = pytest.mark.timeout(600)


@pytest.mark.slow
def test_selftest_kills_a_real_app_mid_write_and_loses_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ANOMALY_DATA_DIR", str(tmp_path / "data"))
    db = tmp_path / "ann.sqlite"
    assert main(["selftest", "--db", str(db), "--writers", "3", "--flags", "8", "--kill"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = dict(line.split(" ", 1) for line in captured.out.strip().splitlines())
    assert lines["killed"].startswith("yes") and lines["lost"] == "0" and lines["duplicated"] == "0"
    assert lines["integrity"] == "ok"
    acked, found, written = int(lines["acknowledged"]), int(lines["found"]), int(lines["written"])
    assert 12 <= acked == found <= written <= 24  # killed at half: in-flight writes may land unacknowledged
    assert Store(db, read_only=True).count_flags() == written


def test_export_command_csv_and_json(tmp_path):
    db = tmp_path / "ann.sqlite"
    s = Store(db)
    for i in range(3):
        s.add_flag(study_key="sk-" + "1" * 20, plane="axial", slice_index=i, shape=(16, 16), n_slices=4,
                   method="ae", label="false_positive", reason="noise", reviewer="alice", box=[1, 1, 5, 5],
                   note=f"n{i}")
    assert main(["export", "--db", str(db), "--format", "csv", "--out", str(tmp_path / "f.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "f.csv")))
    assert len(rows) == 3 and {r["note"] for r in rows} == {"n0", "n1", "n2"}
    assert main(["export", "--db", str(db), "--format", "json", "--out", str(tmp_path / "f.json")]) == 0
    assert len(json.load(open(tmp_path / "f.json"))["flags"]) == 3
