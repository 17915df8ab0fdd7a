"""Read a results folder: every Parquet part, one row per study (content hash), newest first wins.

Parts that cannot be read (a run killed while writing one) are skipped and reported, so a
resumed run scores those studies again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


def part_files(out: Path | str) -> list[Path]:
    out = Path(out)
    return sorted(p for p in out.glob("*.parquet") if p.is_file()) if out.is_dir() else []


def read_part(path: Path, columns: list[str] | None = None, warn: bool = True) -> pd.DataFrame | None:
    """One part as a DataFrame, None if it is unreadable (truncated by a kill, or still being
    written: the live progress poller passes ``warn=False``, since that is not a fault)."""
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except Exception:  # noqa: BLE001 - a partial file from a killed run
        if warn:
            log.warning("skipping unreadable results part %s", path.name)
        return None


def read_results(out: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    """All rows of the folder's parts; a study scored twice keeps its latest ``ok`` row (else latest)."""
    frames = [f for f in (read_part(p) for p in part_files(out)) if f is not None and len(f)]
    if not frames:
        return pd.DataFrame(columns=["content_hash", "status", "source"])
    df = pd.concat(frames, ignore_index=True, sort=False)
    df["_ok"] = df["status"].eq("ok")
    df = df.sort_values(["_ok", "finished_at"]).drop_duplicates("content_hash", keep="last").drop(columns="_ok")
    df = df.sort_values("source", kind="stable").reset_index(drop=True)
    return df[[c for c in columns if c in df]] if columns else df


def done_hashes(out: Path | str, retry_failed: bool = False) -> set[str]:
    """Content hashes already in the results (only the ``ok`` ones with ``retry_failed``)."""
    df = read_results(out)
    if not len(df):
        return set()
    if retry_failed:
        df = df[df["status"] == "ok"]
    return set(df["content_hash"].astype(str))


def result_methods(df: pd.DataFrame) -> list[str]:
    """Methods that have a score column in ``df`` (``consensus`` included when present)."""
    return sorted({c.split("__")[0] for c in df.columns if c.endswith("__score")})
