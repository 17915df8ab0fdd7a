"""Print the README's benchmark table rows from the metrics.md files of a benchmark run.

    PYTHONPATH=. .venv/bin/python benchmarks/readme_tables.py runs/benchmark
The README's tables are these rows, copied as printed (main table, the >= 10 mm groups by 3D
diameter, by in-slice extent and by lesion contrast, the paired differences against the AE, and
the image-level CIs and paired differences with pseudo-subjects resampled instead of slices);
nothing is typed by hand.
"""
import sys
from pathlib import Path


def section(md: str, heading: str | None) -> list[str]:
    """Table rows (without header) of the first table, or of the table under the line HEADING."""
    lines = md.splitlines()
    start = 0
    if heading is not None:
        hits = [i for i, line in enumerate(lines) if line.strip() == heading]
        if not hits:
            return []
        start = hits[0]
    rows, seen = [], False
    for line in lines[start:]:
        if line.startswith("|"):
            seen = True
            if not line.startswith("|---") and not line.startswith("| Method"):
                rows.append(line)
        elif seen:
            break
    return rows


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/benchmark")
    for run in ("test", "test_anoddpm", "heldout", "heldout_anoddpm", "domain_shift"):
        p = root / run / "metrics.md"
        if not p.exists():
            continue
        md = p.read_text()
        for heading in (None, "## By lesions >= 10 mm (3D diameter)", "## By lesions >= 10 mm across in the scored slice",
                        "## By lesion contrast, lesions >= 10 mm",
                        "## Paired differences: each method minus ae",
                        "## Image-level CIs resampling subjects",
                        "## Paired differences resampling subjects: each method minus ae"):
            rows = section(md, heading)
            if rows:
                print(f"### {run}: {heading or 'main table'}")
                print("\n".join(rows))
                print()
