"""In headless Chromium: minimise FFA in Explore -> History lists "min FFA" -> the exported manifest has its objective.

Needs Debian's Chromium at /usr/bin/chromium; skipped with a reason otherwise. Screenshot: test-artifacts/.
"""
import csv
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from browser import CHROME_ARGS, CHROMIUM, playwright_or_skip

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
sync_api = playwright_or_skip()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path_factory.mktemp("historyapp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "BRAINDIVE_IMAGE_SIZE": "64"}
    with open(data / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--data-dir", str(data)], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}/", time.time() + 300
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("app did not start:\n" + (data / "server.log").read_text())
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_minimised_ffa_is_min_ffa_in_history_and_manifest(server, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(server, wait_until="load", timeout=120_000)
            page.wait_for_selector("#flatmap img", timeout=120_000)
            page.locator("#objective label", has_text="minimize").click()
            page.locator("#steps input[type=number]").fill("3")
            page.locator("#steps input[type=number]").press("Enter")
            page.locator("#generate").click()
            page.wait_for_function("document.querySelector('#step-counter').innerText.includes('Done')", timeout=300_000)
            page.get_by_role("tab", name="History").click()
            page.wait_for_selector("#history-gallery img", timeout=120_000)
            page.wait_for_function("document.querySelector('#history-table').innerText.includes('min FFA')",
                                   timeout=60_000)
            table = page.locator("#history-table").inner_text()
            assert "max FFA" not in table
            page.locator("#history-gallery img").first.click()  # opens the result
            page.wait_for_selector("#history-map img", timeout=120_000)
            page.wait_for_selector("#history-chart .js-plotly-plot, #history-chart .plot-container", timeout=120_000)
            assert "min FFA" in page.locator("#history-params").inner_text()
            page.locator("#history-export-all").click()
            link = page.locator("#history-zip a").first
            link.wait_for(timeout=120_000)
            with page.expect_download(timeout=60_000) as download:
                link.click()
            zip_path = tmp_path / "export.zip"
            download.value.save_as(zip_path)
            page.screenshot(path=ARTIFACTS / "history-min-ffa.png", full_page=True)
        finally:
            browser.close()
    with zipfile.ZipFile(zip_path) as zf:
        (row,) = csv.DictReader(io.StringIO(zf.read("manifest.csv").decode()))
    assert (row["objective_kind"], row["label"], row["target"], row["objective"]) == ("minimize", "min FFA", "FFA",
                                                                                      "FFA mean")
    assert f"FFA mean {float(row['predicted_objective']):.2f}" in table  # the value History showed, same sign
