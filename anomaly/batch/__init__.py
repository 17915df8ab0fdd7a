"""Batch scoring of a whole cohort on Ray Data: ``python -m anomaly.batch``.

``discovery`` finds the studies of a folder or manifest, ``scoring`` turns one study into
one result row through ``anomaly.analysis.analyse`` (the app's scoring path),
``pipeline`` runs the scorer over a cohort with Ray Data and writes Parquet parts,
``results`` reads them back (resume, worklist). See docs/batch.md.
"""

from anomaly.batch.discovery import discover
from anomaly.batch.results import read_results

__all__ = ["discover", "read_results"]
