"""Print the README's benchmark table rows from the metrics.md files of a benchmark run.

    PYTHONPATH=. .venv/bin/python benchmarks/readme_tables.py runs/benchmark
The README's tables are these rows, copied as printed (main table, the >= 10 mm groups by 3D
diameter and by in-slice extent); nothing is typed by hand.
"""
import sys
from pathlib import Path


def section(md: str, title: str | None) -> list[str]:
    """Table rows (without header) of the first table, or of the table under '## By TITLE'."""
    lines = md.splitlines()
    start = 0
    if title is not None:
        hits = [i for i, line in enumerate(lines) if line.strip() == f"## By {title}"]
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
    for run in ("test", "heldout", "domain_shift"):
        p = root / run / "metrics.md"
        if not p.exists():
            continue
        md = p.read_text()
        for title in (None, "lesions >= 10 mm (3D diameter)", "lesions >= 10 mm across in the scored slice"):
            rows = section(md, title)
            if rows:
                print(f"### {run}: {title or 'main table'}")
                print("\n".join(rows))
                print()
