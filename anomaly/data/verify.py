"""Does a rebuilt cohort hold the same test split as the one the README's figures were measured on?

The build is deterministic on one machine, but not bit-identical across CPUs and library builds:
a lesion that is kept or skipped on a threshold of floating-point values changes the random draws
after it, so one pseudo-subject can come out with other lesions (session 14: ``test-1000`` on an
AVX-512 Xeon with numpy 2.4.6). ``compare_split`` lists, subject by subject, the slices whose label,
lesion kind, size or level differ from the reference (``docs/benchmark/test_scores.csv``, written by
the benchmark run), so that a reader knows which figures to expect before evaluating.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from anomaly.errors import DatasetError

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "benchmark" / "test_scores.csv"


@dataclass
class SplitComparison:
    """Slices of a split against the reference: how many match, and per pseudo-subject the files that do not."""

    n_reference: int
    n_matching: int
    differing: dict[str, list[str]] = field(default_factory=dict)  # subject -> files
    missing: list[str] = field(default_factory=list)  # in the reference, not in the split
    extra: list[str] = field(default_factory=list)  # in the split, not in the reference

    @property
    def identical(self) -> bool:
        return not (self.differing or self.missing or self.extra)

    def report(self) -> str:
        if self.identical:
            return f"as the reference: all {self.n_reference} slices (label, lesion kind, size and extent in the slice)"
        lines = [f"{self.n_matching} of {self.n_reference} slices as in the reference"]
        for subject, files in sorted(self.differing.items()):
            lines.append(f"  {subject}: {len(files)} slice(s) differ (e.g. {files[0]})")
        if self.missing:
            lines.append(f"  missing: {len(self.missing)} file(s) (e.g. {self.missing[0]})")
        if self.extra:
            lines.append(f"  not in the reference: {len(self.extra)} file(s) (e.g. {self.extra[0]})")
        lines.append("The README's test figures were measured on the reference; figures on this build will differ "
                     "(README, 'Reproducing the figures').")
        return "\n".join(lines)


def _row_key(r: dict) -> tuple:
    """What identifies a slice's truth: label, lesion kind, lesion size and the lesion's extent in the slice."""
    kind = (r.get("kind") or "").strip()
    num = lambda k: f"{float(r[k]):.1f}" if (r.get(k) or "").strip() else ""  # noqa: E731
    return str(r.get("label", "")).strip(), "" if kind == "none" else kind, num("size_mm"), num("slice_extent_mm")


def _read(path: Path) -> dict[str, dict]:
    """file -> row of a labels CSV; a missing, unreadable or file-less table is a ``DatasetError``."""
    if not path.is_file():
        raise DatasetError(f"no {path.name} at {path.parent}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "file" not in (reader.fieldnames or []):
                raise DatasetError(f"{path.name} at {path.parent} has no 'file' column")
            return {r["file"]: r for r in reader}
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path.name} at {path.parent} is not a readable CSV table ({e})") from None


def compare_split(split_dir: Path | str, reference: Path | str = REFERENCE) -> SplitComparison:
    """``split_dir/labels.csv`` against ``reference`` (a CSV with file, label, kind, size_mm, slice_extent_mm)."""
    ours, ref = _read(Path(split_dir) / "labels.csv"), _read(Path(reference))
    cmp = SplitComparison(len(ref), 0)
    for f, r in ref.items():
        if f not in ours:
            cmp.missing.append(f)
        elif _row_key(ours[f]) == _row_key(r):
            cmp.n_matching += 1
        else:
            cmp.differing.setdefault(ours[f].get("subject") or f.rsplit("_", 1)[0], []).append(f)
    cmp.extra = [f for f in ours if f not in ref]
    return cmp
