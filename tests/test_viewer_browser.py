"""The viewer in a real browser: headless Chromium driven by selenium.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (CI installs
them); skipped with a reason when they are absent, or failed when
``SCENE_SIM_REQUIRE_BROWSER=1`` (set it in CI so a missing browser cannot
pass silently).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scene_sim.studies.scene._catalog import taxonomy_at
from scene_sim.studies.scene.viewer import write_viewer

from .viewer_fixture import XSS, shared_run, shared_synthetic_viewer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser = _find("chromium", "chromium-browser")
    chromedriver = _find("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if browser is None or chromedriver is None:
        reason = (
            "headless Chromium not found: install the Debian packages 'chromium' and 'chromium-driver' "
            "(apt-get install -y chromium chromium-driver)"
        )
        if os.environ.get("SCENE_SIM_REQUIRE_BROWSER") == "1":  # CI: a missing browser is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    profile = tempfile.mkdtemp(prefix="scene-sim-chromium-")
    options = Options()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=options, service=Service(chromedriver))
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _severe(drv: Any) -> list[dict[str, Any]]:
    return [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def _load(drv: Any, path: Path) -> float:
    start = time.monotonic()
    drv.get(path.resolve().as_uri())
    _wait(
        lambda: drv.execute_script("return document.documentElement.getAttribute('data-ready')") == "1",
        timeout=60,
        what="the viewer to be ready",
    )
    return time.monotonic() - start


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    info = shared_run(tmp_path_factory.getbasetemp())
    path = write_viewer(info["run_dir"].path, info["run_dir"].path / "viewer-browser.html")
    return {**info, "path": path}


def test_filter_open_reveal_and_screenshot(driver, viewer, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    rd = viewer["run_dir"]
    _load(driver, viewer["path"])
    count = driver.find_element(By.ID, "count")
    assert count.get_attribute("data-shown") == "6" and count.get_attribute("data-total") == "6"
    assert "Showing 6 of 6 episodes" in count.text

    # filter by subject model: the visible count and the rows follow
    Select(driver.find_element(By.ID, "f-model")).select_by_value("scripted/learner")
    _wait(lambda: count.get_attribute("data-shown") == "3", what="the filtered count")
    assert count.text == "Showing 3 of 6 episodes"
    rows = driver.find_elements(By.CSS_SELECTOR, "#list .row")
    assert len(rows) == 3 and all("scripted-learner" in r.get_attribute("data-id") for r in rows)
    # facet counts on the other filters reflect the model filter
    opts = {
        o.get_attribute("value"): o.get_attribute("data-count")
        for o in driver.find_elements(By.CSS_SELECTOR, "#f-precedent option")
        if o.get_attribute("value")
    }
    learner_ids = [i for i in rd.episode_ids() if "scripted-learner" in i]
    by_precedent: dict[str, int] = {}
    for eid in learner_ids:
        p = json.loads(rd.episode_path(eid).read_text(encoding="utf-8").splitlines()[0])["tuple"]["precedent"]
        by_precedent[str(p)] = by_precedent.get(str(p), 0) + 1
    assert {k: int(v) for k, v in opts.items() if int(v)} == by_precedent

    # open the XSS probe episode: its text shows literally, nothing executes
    xss_id = viewer["xss_episode"]
    row = next(r for r in rows if r.get_attribute("data-id") == xss_id)
    row.click()
    article = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#detail article.episode"), what="the episode")[0]
    assert article.get_attribute("data-episode-id") == xss_id
    texts = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#detail .msg .text")]
    assert XSS in texts
    assert driver.find_elements(By.CSS_SELECTOR, "#detail img, #detail script") == []
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text  # nothing executed

    # the chat shows every logged message, reaction and no-op
    lines = rd.episode_path(xss_id).read_text(encoding="utf-8").splitlines()
    actions = [e for e in map(json.loads, lines) if e["kind"] == "action"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#detail .msg[data-turn-id]")) == sum(
        a["action"] == "message" for a in actions
    )
    assert len(driver.find_elements(By.CSS_SELECTOR, "#detail .reaction")) == sum(
        a["action"] == "react" for a in actions
    )
    assert len(driver.find_elements(By.CSS_SELECTOR, "#detail .noop")) == sum(a["action"] == "no-op" for a in actions)
    labels = rd.read_labels(xss_id)["turn_labels"]
    shown = [b.get_attribute("data-label") for b in driver.find_elements(By.CSS_SELECTOR, "#detail .chat .badge")]
    assert sorted(shown) == sorted(x["label"] for x in labels if x["label"] != "NONE")

    # the hidden norm is closed by default, then revealed
    details = driver.find_element(By.CSS_SELECTOR, "#detail details.hidden-norm")
    norm = driver.find_element(By.CSS_SELECTOR, "#detail .norm-text")
    assert details.get_attribute("open") is None
    assert not norm.is_displayed()
    details.find_element(By.TAG_NAME, "summary").click()
    _wait(lambda: norm.is_displayed(), what="the revealed norm")
    assert details.get_attribute("open") is not None
    start = json.loads(lines[0])
    assert norm.text == taxonomy_at(None).norm(start["tuple"]["norm"]).norm_text

    # an end reason is shown
    assert driver.find_element(By.CSS_SELECTOR, "#detail .end").get_attribute("data-reason") == "max_turns"

    shot = tmp_path / "viewer.png"
    assert driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert _severe(driver) == []


def test_reset_and_search(driver, viewer):
    from selenium.webdriver.common.by import By

    _load(driver, viewer["path"])
    count = driver.find_element(By.ID, "count")
    search = driver.find_element(By.ID, "search")
    search.send_keys("artefact_share")
    _wait(lambda: count.get_attribute("data-shown") == "2", what="the searched count")
    driver.find_element(By.ID, "reset").click()
    _wait(lambda: count.get_attribute("data-shown") == "6", what="the reset count")


def test_six_thousand_episodes_load_fast(driver, tmp_path_factory):
    from selenium.webdriver.common.by import By

    path = shared_synthetic_viewer(tmp_path_factory.getbasetemp())
    seconds = _load(driver, path)
    assert seconds < 10, f"6000 episodes took {seconds:.1f} s to load"
    count = driver.find_element(By.ID, "count")
    assert count.get_attribute("data-shown") == "6000"
    rows = driver.find_elements(By.CSS_SELECTOR, "#list .row")
    assert 0 < len(rows) < 120  # virtualised: only the rows on screen exist
    # scroll to the end: the last episode is rendered, still few rows in the DOM
    driver.execute_script("const l = document.getElementById('list'); l.scrollTop = l.scrollHeight;")
    # asked in the page: the virtual list re-renders rows while we look, so element handles go stale
    last_row_shown = "return [...document.querySelectorAll('#list .row')].some(r => r.dataset.id === 'synthetic-05999')"
    _wait(lambda: driver.execute_script(last_row_shown), what="the last row")
    start = time.monotonic()
    driver.find_element(By.CSS_SELECTOR, "#f-model option[value='openai/model-3']").click()
    _wait(lambda: count.get_attribute("data-shown") == "750", what="the filtered count")
    assert time.monotonic() - start < 5
    driver.execute_script("document.querySelector('#list .row').click()")
    _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#detail article.episode"), what="the episode")
    assert _severe(driver) == []
