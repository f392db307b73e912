"""How fast the embeddings viewer draws a visualization run in headless Chromium.

    python benchmarks/viewer.py [--sizes 1000,10000,100000] [--json OUT.json]

Per size N: a store with N samples in 10 labelled Gaussian clusters and a manual visualization
run of them, served by ``python -m dagster_brain.viewer`` on a free 127.0.0.1 port and opened
in headless Chromium (Debian's ``chromium``, driven by Playwright; WebGL through Chromium's
software renderer, so no GPU is involved). Columns:

- ``json_mb``: size of the page's data request (ids, sample ids, x, y);
- ``fcp_ms``: first contentful paint (the side panel; the points come later);
- ``data_ms``: the data request answered and parsed (from navigation start);
- ``plot_ms``: ``Plotly.newPlot`` resolved, i.e. after ``plotly_afterplot`` (from navigation
  start): the points are on screen;
- ``ready_ms``: also coloured by the label field (its values fetched, the trace restyled);
- ``colour_fetch_ms``: fetching one colour field's values (the label field) from the app;
- ``restyle_ms``: recolouring the points with them (``Plotly.restyle``);
- ``zoom_ms``: one ``Plotly.relayout`` of both axis ranges;
- ``js_heap_mb``: the page's JS heap after it is ready (CDP ``Performance.getMetrics``);
- ``renderer_rss_mb``: the highest resident memory of the page's renderer process, and
  ``chromium_rss_mb`` of all Chromium processes together (browser, GPU, renderers; shared pages
  counted once per process, so an upper bound), sampled every 20 ms from the navigation to the
  end of the zoom.

These machines are shared and have no GPU: compare rows within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

import dagster_brain as fob
from dagster_brain.store import Store

FLAGS = ["--headless", "--no-sandbox", "--no-first-run", "--disable-background-networking"]
FLAGS += ["--enable-unsafe-swiftshader"]  # software WebGL for scattergl (no GPU here)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(root: Path, n: int, seed: int = 0) -> Store:
    """N samples (files are not read: hovering is not measured), 10 labelled clusters."""
    rng = np.random.default_rng(seed)
    store = Store(root / "data")
    ids = [f"s{i:06d}" for i in range(n)]
    classes = rng.integers(0, 10, size=n)
    centres = rng.normal(scale=8.0, size=(10, 2))
    xy = centres[classes] + rng.normal(size=(n, 2))
    store.write_samples(
        "bench",
        pd.DataFrame(
            {
                "sample_id": ids,
                "filepath": [str(root / f"{i}.png") for i in ids],
                "tags": [[] for _ in ids],
                "content_hash": ids,
            }
        ),
    )
    labels = pd.DataFrame({"sample_id": ids, "label_id": ids, "label": [f"c{c}" for c in classes]})
    store.write_labels("bench", "gt", "classification", [f"c{c}" for c in range(10)], labels)
    pd.DataFrame({"id": ids, "x": xy[:, 0], "y": xy[:, 1]}).to_parquet(root / "points.parquet")
    fob.compute_visualization(
        fob.Dataset("bench", store),
        embeddings=np.hstack([xy, rng.normal(size=(n, 2))]).astype(np.float32),
        method="manual",
        points_path=str(root / "points.parquet"),
        label_field="gt",
        brain_key="viz",
    )
    return store


class PeakRSS:
    """Highest RSS of this process's Chromium descendants (summed) and of one renderer
    process, sampled in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self.renderer = 0
        self._kinds: dict[int, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in me.children(recursive=True):
                try:
                    if "chrom" not in p.name():
                        continue
                    rss = p.memory_info().rss
                    if p.pid not in self._kinds:
                        self._kinds[p.pid] = "--type=renderer" in " ".join(p.cmdline())
                    if self._kinds[p.pid]:
                        self.renderer = max(self.renderer, rss)
                    total += rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(n: int, browser) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        store = make_store(root, n)
        build_s = time.perf_counter() - t0
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster_brain.viewer", "--port", str(port)]
            + ["--data-dir", str(store.data_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(base + "/", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            with urllib.request.urlopen(base + "/api/plot/bench/viz") as r:
                json_mb = len(r.read()) / 1e6
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(600_000)
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            with PeakRSS() as rss:
                page.goto(base + "/plot/bench/viz")
                page.wait_for_function("window.viewer && window.viewer.ready", polling=10)
                ready_ms = page.evaluate("performance.now()")
                t = page.evaluate(
                    "({data: viewer.dataAt, plot: viewer.plottedAt, renderer: viewer.renderer,"
                    " fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {})"
                    ".startTime})"
                )
                page.evaluate("colourBy('')")
                recolour = page.evaluate(
                    "(async () => { const t0 = performance.now();"
                    " const c = await fetchColour('label:gt'); const t1 = performance.now();"
                    " await Plotly.restyle('plot', {marker: [markerFor(c).marker]}, [0]);"
                    " return [t1 - t0, performance.now() - t1]; })()"
                )
                zoom = page.evaluate(
                    "(async () => { const t = performance.now();"
                    " await Plotly.relayout('plot', {'xaxis.range': [-5, 5],"
                    " 'yaxis.range': [-5, 5]}); return performance.now() - t; })()"
                )
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            page.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {
        "points": n,
        "renderer": t["renderer"],
        "build_s": round(build_s, 1),
        "json_mb": round(json_mb, 2),
        "fcp_ms": round(t["fcp"] or float("nan")),
        "data_ms": round(t["data"]),
        "plot_ms": round(t["plot"]),
        "ready_ms": round(ready_ms),
        "colour_fetch_ms": round(recolour[0]),
        "restyle_ms": round(recolour[1]),
        "zoom_ms": round(zoom),
        "js_heap_mb": round(metrics["JSHeapUsedSize"] / 1e6, 1),
        "renderer_rss_mb": round(rss.renderer / 1e6),
        "chromium_rss_mb": round(rss.peak / 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            for n in (int(s) for s in args.sizes.split(",")):
                rows.append(measure(n, browser))
                print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            browser.close()
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print(
            "| "
            + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols)
            + " |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
