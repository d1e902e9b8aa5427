"""The workbench driven as a person would, in headless Chromium (Debian's chromium + chromium-driver, selenium).

One real uvicorn server on a free localhost port for the module; the tests run in file order (compare, train and
stop, promote and roll back, playground, retrieval, data). With LLMTAILOR_UI_SCREENSHOTS=DIR each page is saved
as a PNG there (`LLMTAILOR_UI_SCREENSHOTS=docs/ui python -m pytest tests/ui/test_ui_browser.py` refreshes docs/ui).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmtailor.runs import read_run
from tests.ui.conftest import SCRIPT, build_project, running, tiny_engine

CHROMEDRIVER = os.environ.get("LLMTAILOR_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

selenium = pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[dev]')")
if not CHROMIUM or not Path(CHROMEDRIVER).exists():
    pytest.skip("browser tests need Chromium and chromedriver (Debian: apt-get install chromium chromium-driver; "
                f"found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER if Path(CHROMEDRIVER).exists() else None})",
                allow_module_level=True)

from selenium.webdriver import Chrome, ChromeOptions  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SHOTS = os.environ.get("LLMTAILOR_UI_SCREENSHOTS")


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    from llmtailor.ui.app import create_app

    project = build_project(tmp_path_factory.mktemp("ui-browser"), tiny_model_dir)
    app = create_app(project["config"], serve_engine=tiny_engine())
    opts = ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1360,900"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        with running(app) as url:
            yield {"url": url, "driver": driver, "project": project, "wb": app.state.wb}
    finally:
        driver.quit()


def shot(driver, name: str) -> None:
    """The whole page (up to 2400 px tall) as docs/ui/<name>.png, through Chromium's DevTools protocol."""
    if not SHOTS:
        return
    import base64

    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")
    height = driver.execute_script("return document.documentElement.scrollHeight") or 900
    clip = {"x": 0, "y": 0, "width": 1360, "height": min(max(height, 600), 2400), "scale": 1}
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                            "clip": clip})
    (Path(SHOTS) / f"{name}.png").write_bytes(base64.b64decode(png["data"]))


def wait(driver, cond, timeout: float = 30):
    """Poll `cond` until it holds. An element read while a form's POST reloads the page goes stale mid-check:
    that is a retry, like an element not there yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    return WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                         ).until(lambda d: cond(d))


def test_runs_table_filters_and_compares_two_runs(site):
    d = site["driver"]
    d.get(site["url"] + "/")
    rows = d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    assert {r.get_attribute("data-run") for r in rows} == {"run-a", "run-b"}
    shot(d, "runs")
    d.find_element(By.ID, "run-filter").send_keys("run-b")
    visible = [r.get_attribute("data-run") for r in rows if r.is_displayed()]
    assert visible == ["run-b"]
    d.find_element(By.ID, "run-filter").clear()
    d.find_element(By.ID, "run-filter").send_keys(" ")  # any input event re-filters
    assert d.find_element(By.ID, "compare-button").get_attribute("disabled")
    for box in d.find_elements(By.CSS_SELECTOR, ".run-select"):
        box.click()
    d.find_element(By.ID, "compare-button").click()
    wait(d, lambda d: "/compare" in d.current_url)
    assert len(d.find_elements(By.CSS_SELECTOR, "#compare-chart polyline")) == 2
    assert "train.learning_rate" in d.find_element(By.ID, "config-diff").text
    shot(d, "compare")


def test_start_a_training_watch_the_curve_then_stop_it(site):
    d, runs_dir = site["driver"], site["project"]["cfg"].runs_dir
    d.get(site["url"] + "/work")
    Select(d.find_element(By.ID, "kind")).select_by_value("train")
    d.find_element(By.ID, "max_steps").send_keys("5000")
    d.find_element(By.ID, "start-button").click()
    wait(d, lambda d: "job=" in d.current_url)
    run_dir = wait(d, lambda d: next((p for p in runs_dir.iterdir() if p.name not in ("run-a", "run-b")
                                      and read_run(p).get("status") == "running"), None), timeout=90)
    d.get(f"{site['url']}/runs/{run_dir.name}")
    first = int(wait(d, lambda d: int(d.find_element(By.ID, "point-count").text or 0) or False, timeout=60))
    wait(d, lambda d: int(d.find_element(By.ID, "point-count").text) > first, timeout=30)  # the curve grows live
    assert d.find_elements(By.CSS_SELECTOR, "#live-chart circle.point")
    shot(d, "run-live")
    d.get(site["url"] + "/work")
    shot(d, "work")
    d.find_element(By.CSS_SELECTOR, ".job[data-running=yes] .stop-button").click()
    wait(d, lambda d: read_run(run_dir).get("status") == "interrupted", timeout=60)
    d.get(f"{site['url']}/runs/{run_dir.name}")
    assert d.find_element(By.ID, "run-status").text == "interrupted"
    assert d.find_element(By.ID, "resume-button").is_enabled()


def test_runs_table_shows_a_cli_training_appear_and_complete_without_a_reload(site):
    d, project = site["driver"], site["project"]
    runs_dir = project["cfg"].runs_dir
    d.get(site["url"] + "/")
    known = {r.get_attribute("data-run") for r in d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")}
    d.execute_script("window.notReloaded = true")  # gone if the page reloads
    log = (runs_dir.parent / "cli-train.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "llmtailor.cli.main", "train", "-c", str(project["config"]),
                             "--max-steps", "3"], stdout=log, stderr=subprocess.STDOUT, cwd=str(project["root"]))
    try:
        def new_row(d):
            rows = d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr[data-run]")
            return next((r for r in rows if r.get_attribute("data-run") not in known), None)

        row = wait(d, new_row, timeout=120)
        run_id = row.get_attribute("data-run")
        wait(d, lambda d: row.get_attribute("data-status") == "completed", timeout=240)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()
    assert d.execute_script("return window.notReloaded") is True
    assert row.find_element(By.CSS_SELECTOR, ".c-steps").text == "3"
    assert row.find_element(By.CSS_SELECTOR, ".c-tokens_per_s").text  # filled in when the run completed
    assert read_run(runs_dir / run_id)["status"] == "completed"
    shot(d, "runs-live")
    shutil.rmtree(runs_dir / run_id)  # a run folder deleted while the page shows it: the row says so
    wait(d, lambda d: row.get_attribute("data-status") == "deleted", timeout=30)
    assert row.find_element(By.CSS_SELECTOR, ".run-select").get_attribute("disabled")


def _form(d, adapter: str):
    return d.find_element(By.CSS_SELECTOR, f'.adapter[data-adapter="{adapter}"] form')


def _serving(d) -> str:
    return d.find_element(By.CSS_SELECTOR, '#stages tr[data-stage="production"]').text


def test_promote_force_and_roll_back(site):
    d = site["driver"]
    d.get(site["url"] + "/registry")
    _form(d, "ad-run-a").find_element(By.CSS_SELECTOR, ".promote-button").click()
    wait(d, lambda d: d.find_elements(By.ID, "done-message"))
    assert "ad-run-a" in _serving(d)
    form = _form(d, "ad-run-b")
    form.find_element(By.CSS_SELECTOR, ".promote-button").click()  # its gates failed: blocked
    assert "failed its evaluation gates" in wait(d, lambda d: d.find_element(By.ID, "error-message")).text
    d.get(site["url"] + "/registry")
    form = _form(d, "ad-run-b")
    form.find_element(By.CSS_SELECTOR, ".force-box").click()
    form.find_element(By.NAME, "who").send_keys("dana")
    form.find_element(By.NAME, "why").send_keys("demo of a forced promotion")
    form.find_element(By.CSS_SELECTOR, ".promote-button").click()
    wait(d, lambda d: d.find_elements(By.ID, "done-message"))
    assert "ad-run-b" in _serving(d) and "forced" in _serving(d)
    d.find_element(By.ID, "rollback-production").click()
    wait(d, lambda d: d.find_elements(By.ID, "done-message") and "rollback" in _serving(d))
    assert "ad-run-a" in _serving(d)
    assert "forced by dana: demo of a forced promotion" in d.find_element(By.ID, "history").text
    shot(d, "registry")


def test_playground_answers_side_by_side_and_takes_feedback(site):
    d = site["driver"]
    d.get(site["url"] + "/playground")
    d.find_element(By.ID, "prompt").send_keys("How long do refunds take?")
    for box in d.find_elements(By.CSS_SELECTOR, ".variant-box"):
        if (box.get_attribute("value") in ("tiny", "acme", "support-bot")) != box.is_selected():
            box.click()
    d.find_element(By.ID, "ask-button").click()
    cards = wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".answer-card[data-done]")) == 3
                 and d.find_elements(By.CSS_SELECTOR, ".answer-card"), timeout=90)
    assert [c.get_attribute("data-done") for c in cards] == ["yes"] * 3
    rag = next(c for c in cards if c.get_attribute("data-model") == "support-bot")
    citation = rag.find_element(By.CSS_SELECTOR, "details.citation")
    citation.find_element(By.TAG_NAME, "summary").click()  # expands to the passage's text
    wait(d, lambda d: "refunds" in citation.find_element(By.CSS_SELECTOR, "pre.passage").text.lower())
    cards[0].find_element(By.CSS_SELECTOR, ".thumb-up").click()
    wait(d, lambda d: "recorded fb-" in cards[0].find_element(By.CSS_SELECTOR, ".feedback-note").text)
    assert [f["rating"] for f in site["wb"].registry.feedback()] == ["up"]
    shot(d, "playground")


def test_search_as_two_tenants_shows_different_results(site):
    d = site["driver"]
    d.get(site["url"] + "/retrieval")
    d.find_element(By.ID, "query").send_keys("refunds")
    d.find_element(By.ID, "t1").send_keys("acme")
    d.find_element(By.ID, "t2").send_keys("globex")
    d.find_element(By.ID, "search-button").click()
    sections = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "section.caller"))
    acme, globex = (s.text for s in sections)
    assert "Acme refunds" in acme and "Globex refunds take" not in acme
    assert "Globex refunds take" in globex and "Acme refunds" not in globex
    shot(d, "retrieval")


def test_data_rows_are_shown_as_text_not_run(site):
    d = site["driver"]
    d.get(f"{site['url']}/data/{site['project']['version']}?q=script")
    assert SCRIPT in d.find_element(By.ID, "rows").text  # shown literally, never executed
    assert d.execute_script("return document.querySelectorAll('#rows script').length") == 0
    shot(d, "data")


def test_lineage_graph_follows_adapter_chains(site):
    from tests.ui.test_ui_lineage import add_adapter_chain

    d = site["driver"]
    add_adapter_chain(site["project"])
    d.get(site["url"] + "/registry")
    d.find_element(By.CSS_SELECTOR, '.adapter[data-adapter="ad-run-dpo"] a.graph-link').click()
    wait(d, lambda d: "/lineage" in d.current_url)
    edges = d.find_element(By.ID, "lineage-edges").text
    assert "init_adapter of dpo" in edges and "merged into" in edges and "exported as gguf" in edges
    assert d.find_elements(By.CSS_SELECTOR, '#lineage-svg g.node.rel-self[data-id="ad-run-dpo"]')
    shot(d, "lineage")
    d.find_element(By.CSS_SELECTOR, '#lineage-svg g.node[data-id="ad-run-merged"] rect').click()  # re-centre
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#lineage-svg g.node.rel-self[data-id="ad-run-merged"]'))
    nodes = {n.get_attribute("data-id") for n in d.find_elements(By.CSS_SELECTOR, "#lineage-svg g.node")}
    assert {"ad-run-b", "ad-run-dpo", "ad-run-a"} <= nodes  # both merge parents and the SFT grandparent
