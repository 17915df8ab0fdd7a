"""Headless Chromium: the Worklist tab lists batch results; clicking a row opens the study in Review
with its stored maps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import running_app
from tests.test_batch import METHODS, make_cohort
from tests.test_browser import ARTIFACTS, browser  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(500)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def worklist_app(tiny_checkpoints, tmp_path_factory):
    from anomaly.batch import discover
    from anomaly.batch.scorer import StudyScorer

    tmp = tmp_path_factory.mktemp("wlapp")
    cohort = make_cohort(tmp / "cohort", n_volumes=2, extras=False)
    (tmp / "results").mkdir()
    table = StudyScorer(METHODS, str(tiny_checkpoints), maps_out=str(tmp / "results"))(pd.DataFrame(discover(cohort)))
    pq.write_table(table, tmp / "results" / "part-0.parquet")
    with running_app(tiny_checkpoints, tmp / "data", ANOMALY_RESULTS=str(tmp / "results")) as url:
        yield url


def test_worklist_row_opens_study(worklist_app, browser):  # noqa: F811
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 1800})
    page.goto(worklist_app, wait_until="load")
    page.get_by_role("tab", name="Worklist").click()
    page.get_by_role("button", name="Open results").click()
    cells = page.locator("#worklist-table").get_by_text("sk-").filter(visible=True)
    cells.first.wait_for(timeout=60_000)
    assert "2 studies" in page.inner_text("body")
    page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=True)
    cells.first.click()
    page.wait_for_selector("text=percentile vs healthy", timeout=180_000)
    page.get_by_text("not rescored").first.wait_for(timeout=60_000)  # the stored maps, no model run
    page.wait_for_function("() => [...document.querySelectorAll('img')].some(i => i.src.includes('.png') && i.naturalWidth > 800)",
                           timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "worklist_opened.png"), full_page=True)
