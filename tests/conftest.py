"""Shared fixtures: a tiny data set on real anatomy and tiny trained checkpoints."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ANOMALY_STUDY_SALT", "test-salt")
os.environ.setdefault("ANOMALY_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

TEMPLATE = ROOT / "assets" / "templates" / "mni152_2009a_t1_1mm.nii.gz"


def make_tiny_dataset(out: Path) -> Path:
    """train / val_normal / val_lesion / test folders from real MNI152 slices, square lesions."""
    from anomaly.data.folder import read_image, write_image, write_labels, write_mask

    v = read_image(TEMPLATE)
    rng = np.random.default_rng(0)
    for split, idxs in [("train", range(40, 150, 3)), ("val_normal", range(41, 150, 9))]:
        for i in idxs:
            write_image(out / split, f"s{i:03d}", v[i] * rng.uniform(0.9, 1.1))
    for split, start in [("val_lesion", 50), ("test", 53)]:
        rows = []
        for i in range(start, 140, 6):
            img = v[i].copy()
            m = np.zeros_like(img, bool)
            lesion = (i // 6) % 2 == 0
            if lesion:
                m[105:125, 85:105] = True
                img[m] = img[m] * 0.25
            write_image(out / split, f"l{i:03d}", img)
            write_mask(out / split, f"l{i:03d}", m)
            rows.append({"file": f"l{i:03d}.png", "label": int(lesion), "kind": "square" if lesion else "", "size_mm": 20 if lesion else ""})
        write_labels(out / split, rows)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tinyds"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    """A MonkeyPatch undone at the end of the test module (for module-scoped fixtures)."""
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_dataset, tmp_path_factory) -> Path:
    """zscore and a few-step AE trained on the tiny data set."""
    from anomaly.train import train
    from anomaly.training import TrainConfig

    root = tmp_path_factory.mktemp("ckpt")
    train("zscore", tiny_dataset, root / "zscore", TrainConfig(seed=0))
    train("ae", tiny_dataset, root / "ae", TrainConfig(seed=0, max_steps=25, batch_size=8))
    train("consensus", tiny_dataset, root / "consensus", TrainConfig(seed=0))
    return root


@contextlib.contextmanager
def running_app(tiny_checkpoints, data_dir: Path, argv: list[str] | None = None, **env_extra):
    """Start the app in a subprocess on a free port (tiny checkpoints, its own data dir) and yield
    its URL; the log goes to ``data_dir/app.log``. ``argv`` replaces ``["app.py"]``."""
    from anomaly.ui.process import start_app

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    proc, url = start_app(dict(ANOMALY_CHECKPOINTS=str(tiny_checkpoints), ANOMALY_DATA_DIR=str(data_dir), **env_extra),
                          data_dir / "app.log", argv or ["app.py"])
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def live_app(tiny_checkpoints, tmp_path_factory):
    with running_app(tiny_checkpoints, tmp_path_factory.mktemp("appdata")) as url:
        yield url


