"""Notebook 04 in a real browser: JupyterLab on localhost, driven by headless Chromium (Playwright).

The test opens the notebook in JupyterLab, runs every cell, moves the viewer's slice slider and
unticks an organ, and checks that the picture the student sees changed each time. Screenshots are
kept in ``runs/browser_test/`` (a CI artefact): look at them.

The browser is the system's Chromium (``/usr/bin/chromium``, Debian's package; ``.ci/run`` installs
it); nothing is downloaded. Without Chromium or Playwright the test skips, unless
``MOSMOSKIT_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where it fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from notebook_checks import tiny_mosmos_checkpoint

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "04_mask_inspection.ipynb"
ARTEFACTS = REPO / "runs" / "browser_test"
CHROMIUM = os.environ.get("MOSMOSKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 120_000


def _requirements() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e .[browser])"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed (pip install -e .[notebooks])"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def jupyterlab(tmp_path):
    """A JupyterLab server on localhost serving ``tmp_path/root``; yields ``(base_url, token, root)``."""
    missing = _requirements()
    if missing:
        if os.environ.get("MOSMOSKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test must run here (MOSMOSKIT_REQUIRE_BROWSER=1) but {missing}")
        pytest.skip(missing)
    root = tmp_path / "root"
    root.mkdir()
    port, token = _free_port(), "mosmoskit-browser-test"
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.flush()
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token, root
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.slow
def test_viewer_reacts_to_the_slider_and_the_organ_toggles_in_chromium(jupyterlab, tmp_path):
    import papermill
    from playwright.sync_api import sync_playwright

    base, token, root = jupyterlab
    checkpoint = tiny_mosmos_checkpoint(tmp_path / "model")
    # The notebook as a student opens it, with the parameters filled in (not executed yet).
    papermill.execute_notebook(str(NOTEBOOK), str(root / "04_mask_inspection.ipynb"), prepare_only=True,
                               parameters={"checkpoint": str(checkpoint), "organ": "liver", "device": "cpu",
                                           "output_dir": str(tmp_path / "inspect")}, progress_bar=False)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/04_mask_inspection.ipynb?token={token}")
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel); }",
                timeout=TIMEOUT_MS)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            news = page.get_by_role("button", name="No")  # JupyterLab's "notify about news?" toast
            if news.count():
                news.first.click()
            picture = page.locator("img.widget-image").first
            try:
                picture.wait_for(state="visible", timeout=TIMEOUT_MS)
            except Exception:
                page.screenshot(path=str(ARTEFACTS / "00_no_viewer.png"), full_page=True)
                raise
            picture.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(ARTEFACTS / "01_viewer_opened.png"), full_page=False)
            first = picture.screenshot(path=str(ARTEFACTS / "01_viewer_image.png"))

            # Move the slice slider by keyboard on its handle, as a student with the mouse would drag it.
            handle = page.locator(".widget-slider", has_text="slice").locator(".noUi-handle").first
            handle.focus()
            for _ in range(3):
                page.keyboard.press("ArrowLeft")
            page.wait_for_timeout(1500)
            moved = picture.screenshot(path=str(ARTEFACTS / "02_after_slider.png"))
            assert moved != first, "moving the slice slider did not change the picture"

            # Untick the liver.
            page.locator(".widget-checkbox", has_text="liver").locator("input").first.click()
            page.wait_for_timeout(1500)
            toggled = picture.screenshot(path=str(ARTEFACTS / "03_after_liver_off.png"))
            assert toggled != moved, "unticking an organ did not change the picture"
            page.screenshot(path=str(ARTEFACTS / "04_viewer_final.png"), full_page=False)

            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert not tracebacks, f"a cell failed in the browser: {tracebacks[:1]}"
        finally:
            browser.close()
