"""The embeddings viewer in headless Chromium: open a visualization run's page from its link,
zoom, colour by a score, hover a thumbnail, lasso a region, save it as a view and read the view
back from the store. Screenshots: ``artifacts/screenshots/viewer_zoom.png`` and
``viewer_lasso.png``. Skipped, with the reason, without chromium or playwright
(``bash scripts/ui_deps.sh``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_viewer import known_points, make_plot_dataset

from dagster_brain.store import Store

pytestmark = [pytest.mark.ui, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "artifacts" / "screenshots"
START_S = 60  # the server answers after ~2 s here
PAGE_TIMEOUT_MS = 30_000
# data-space region around s000, s001, s003, s004 (the points at x, y in {0, 1})
REGION = (-0.5, 1.5, -0.5, 1.5)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--no-first-run", "--disable-background-networking"]


def chromium_path() -> str | None:
    """Debian's chromium (``scripts/ui_deps.sh``), as tests/test_ui_browser.py finds it."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def viewer(store, tmp_path, monkeypatch):
    """A plotted dataset and ``python -m dagster_brain.viewer`` on a free loopback port."""
    if chromium_path() is None:
        pytest.skip("chromium not found: apt-get install chromium (see scripts/ui_deps.sh)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"playwright not importable ({exc}): see scripts/ui_deps.sh")
    port = free_port()
    monkeypatch.setenv("BRAIN_VIEWER_PORT", str(port))  # the run's link points here
    outcome = make_plot_dataset(store, tmp_path)
    log = open(tmp_path / "viewer.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_brain.viewer", "--port", str(port)]
        + ["--data-dir", str(store.data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, (tmp_path / "viewer.log").read_text()
                assert time.monotonic() < deadline, "viewer did not answer"
                time.sleep(0.2)
        yield store, outcome
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def plot_link(outcome) -> str:
    """The link the visualization asset's metadata carries (``interactive_plot_url``); the
    run summary's ``viewer_url`` until methods/visualization.py renders it."""
    from dagster_brain.methods import get_method

    url = get_method("visualization").asset_metadata(outcome)["interactive_plot_url"].url
    return url if url.startswith("http://") else outcome.summary["viewer_url"]


def to_page(page, x: float, y: float) -> tuple[float, float]:
    """Page pixel coordinates of a data point of the plot."""
    return tuple(
        page.evaluate(
            """([x, y]) => {
              const gd = document.getElementById('plot'), L = gd._fullLayout;
              const box = gd.getBoundingClientRect();
              return [box.left + L.xaxis._offset + L.xaxis.l2p(x),
                      box.top + L.yaxis._offset + L.yaxis.l2p(y)];
            }""",
            [x, y],
        )
    )


def test_zoom_lasso_and_save_a_view(viewer):
    from playwright.sync_api import expect, sync_playwright

    store, outcome = viewer
    SHOTS.mkdir(parents=True, exist_ok=True)
    link = plot_link(outcome)
    assert link.startswith("http://127.0.0.1:") and link.endswith("/plot/toy/viz")
    pts = known_points()
    x0, x1, y0, y1 = REGION
    inside = pts[pts.x.between(x0, x1) & pts.y.between(y0, y1)]["id"].tolist()
    assert inside == ["s000", "s001", "s003", "s004"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(link)
            page.wait_for_function("window.viewer && window.viewer.ready")
            assert page.evaluate("window.viewer.data.ids.length") == len(pts)
            assert page.evaluate("window.viewer.renderer") == "scattergl"  # WebGL is there
            # coloured by the run's label field, with its legend
            expect(page.locator("#legend")).to_contain_text("cat")

            # zoom onto the lower-left cluster
            page.evaluate(
                "Plotly.relayout('plot', {'xaxis.range': [-1, 3], 'yaxis.range': [-1, 2]})"
            )
            ranges = page.evaluate(
                "(() => { const L = document.getElementById('plot')._fullLayout;"
                " return [L.xaxis.range, L.yaxis.range]; })()"
            )
            assert ranges == [[-1, 3], [-1, 2]]
            # wheel zoom (scrollZoom) narrows the x range further
            cx, cy = to_page(page, 1.0, 0.5)
            page.mouse.move(cx, cy)
            page.mouse.wheel(0, -300)
            page.wait_for_function(
                "(() => { const r = document.getElementById('plot')._fullLayout.xaxis.range;"
                " return r[1] - r[0] < 4; })()"
            )
            page.evaluate(
                "Plotly.relayout('plot', {'xaxis.range': [-1, 3], 'yaxis.range': [-1, 2]})"
            )

            # colour by the uniqueness score (a colour bar instead of a legend)
            page.select_option("#field", "score:uniq")
            page.wait_for_function("window.viewer.colour && window.viewer.colour.kind == 'score'")

            # hover a point: its thumbnail loads from the app
            hx, hy = to_page(page, 2.0, 1.0)  # s005
            page.mouse.move(hx, hy)
            thumb = page.locator("#thumb")
            expect(thumb).to_be_visible()
            expect(page.locator("#hovered")).to_contain_text("s005")
            thumb.evaluate("i => i.complete ? null : new Promise(ok => { i.onload = ok; })")
            assert thumb.evaluate("i => i.naturalWidth") > 0
            page.screenshot(path=str(SHOTS / "viewer_zoom.png"))

            # lasso around the region (a closed polygon through its corners)
            page.evaluate("Plotly.relayout('plot', {dragmode: 'lasso'})")
            corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
            px = [to_page(page, x, y) for x, y in corners]
            page.mouse.move(*px[0])
            page.mouse.down()
            for p in px[1:]:
                page.mouse.move(*p, steps=8)
            page.mouse.up()
            page.wait_for_function("window.viewer.selected.length > 0")
            assert sorted(page.evaluate("window.viewer.selected")) == inside
            expect(page.locator("#count")).to_have_text("4 samples selected")

            page.fill("#name", "corner")
            page.click("#save")
            page.wait_for_function("window.viewer.lastSave !== null")
            expect(page.locator("#msg")).to_have_text("saved view corner (4 samples)")
            page.screenshot(path=str(SHOTS / "viewer_lasso.png"))

            # a bad name is refused on the page, naming the problem
            page.fill("#name", "Bad Name")
            page.click("#save")
            expect(page.locator("#msg")).to_contain_text("is not a valid name")
        finally:
            browser.close()

    reopened = Store(store.data_dir)
    assert sorted(reopened.load_view_ids("toy", "corner")) == inside
    assert reopened.saved_views("toy")["source"].tolist() == ["viz"]
