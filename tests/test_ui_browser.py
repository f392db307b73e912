"""The Dagster UI used as a person uses it: `dagster dev` on a tiny brain-keys YAML, driven by
headless Chromium through Playwright.

Open the dataset's asset group, click "Materialize all", wait until every asset is materialised,
open the uniqueness asset and its histogram, then the thumbnail grids of the uniqueness and
duplicates assets. Screenshots go to ``artifacts/ui/`` in the repo, the thumbnail grids' to
``artifacts/screenshots/``.
Needs the Debian ``chromium`` package and the ``playwright`` Python package
(``bash scripts/ui_deps.sh``); skipped with the reason when either is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dagster_brain.store import Store

pytestmark = [pytest.mark.ui, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "ui"
SCREENSHOTS = REPO / "artifacts" / "screenshots"  # the README's screenshots
DATASET = "pets"
LOCATION = "dagster_brain"
GROUP_URL = f"/locations/__repository__@{LOCATION}/asset-groups/{DATASET}"
ASSETS = {
    f"{DATASET}/samples",
    f"{DATASET}/embeddings/default",
    f"{DATASET}/brain/uniqueness",
    f"{DATASET}/brain/sim",
    f"{DATASET}/brain/dups",
    # uniqueness and dups read the same vectors: one generated kNN graph upstream of both
    f"{DATASET}/brain/knn_default_cosine",
    # every brain run of the dataset in one HTML page, served by the embeddings viewer
    f"{DATASET}/brain/health_report",
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 180  # `dagster dev` answers /server_info after ~5 s here
RUN_START_S = 90  # "Materialize all" click -> run queued/started
RUN_FINISH_S = 300  # the run itself takes ~45 s on 2 CPU cores
PAGE_TIMEOUT_MS = 60_000  # each Playwright action / assertion
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def chromium_path() -> str | None:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_project(root: Path) -> Path:
    """8 random PNGs in two class folders plus an exact copy, and the brain-keys YAML."""
    images = root / "images"
    rng = np.random.default_rng(7)
    for cls in ("cat", "dog"):
        (images / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(images / cls / f"{i}.png")
    shutil.copy(images / "cat" / "0.png", images / "cat" / "copy.png")
    keys = root / "brain_keys.yaml"
    spec = {
        "datasets": [{"name": DATASET, "source": {"type": "image_folder", "path": str(images)}}],
        "embeddings": [{"key": "default", "dataset": DATASET, "num_workers": 0, "batch_size": 8}],
        "brain_runs": [
            {
                "brain_key": "uniqueness",
                "kind": "uniqueness",
                "dataset": DATASET,
                "embeddings": "default",
                "k": 2,
            },
            {
                "brain_key": "sim",
                "kind": "similarity",
                "dataset": DATASET,
                "embeddings": "default",
                "backend": "sklearn",
            },
            {"brain_key": "dups", "kind": "duplicates", "dataset": DATASET, "similarity": "sim"},
        ],
    }
    keys.write_text(yaml.safe_dump(spec))
    return keys


def log_tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the whole process group (webserver, daemon, code server, run workers), wait
    until none of it is left, SIGKILL whatever is still there after 30 s."""
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 15)):
        if not group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and group_alive(pgid):
            if proc.poll() is None:
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)
    if proc.poll() is None:
        proc.wait(timeout=10)
    assert not group_alive(pgid), f"processes of group {pgid} are still running"


def restore_sigint() -> None:  # runs in the child before exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    def __init__(self, base_url: str, data_dir: Path, log: Path, proc: subprocess.Popen):
        self.base_url, self.data_dir, self.log, self.proc = base_url, data_dir, log, proc

    def graphql(self, query: str) -> dict:
        req = urllib.request.Request(
            self.base_url + "/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def state(self) -> tuple[dict[str, str], dict[str, str | None]]:
        """(run id -> status, asset key -> run id of its latest materialisation or None)."""
        data = self.graphql(
            "{ runsOrError { __typename ... on Runs { results { runId status } } }"
            f' assetNodes(group: {{groupName: "{DATASET}", repositoryName: "__repository__",'
            f' repositoryLocationName: "{LOCATION}"}})'
            " { assetKey { path } assetMaterializations(limit: 1) { runId } } }"
        )
        runs = {r["runId"]: r["status"] for r in data["runsOrError"]["results"]}
        assets = {
            "/".join(n["assetKey"]["path"]): (
                n["assetMaterializations"][0]["runId"] if n["assetMaterializations"] else None
            )
            for n in data["assetNodes"]
        }
        return runs, assets

    def context(self) -> str:
        return f"\n--- dagster dev log (tail) ---\n{log_tail(self.log)}"


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A server in its own process group (stopped with :func:`stop_group`), output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=restore_sigint,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if chromium_path() is None:
        pytest.skip("chromium not found: apt-get install chromium (see scripts/ui_deps.sh)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"playwright not importable ({exc}): see scripts/ui_deps.sh")
    root = tmp_path_factory.mktemp("ui")
    keys = write_project(root)
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    storage, data_dir = root / "storage", root / "data"
    storage.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAIN_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        BRAIN_DAGSTER_STORAGE_DIR=str(storage),
        BRAIN_DATA_DIR=str(data_dir),
        BRAIN_BRAIN_KEYS_PATH=str(keys),
        BRAIN_CONFIG_PATH=str(root / "no_brain_config.json"),
        PYTHONUNBUFFERED="1",
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["BRAIN_VIEWER_PORT"] = str(free_port())  # the report asset links the viewer's page
    port = free_port()
    log = root / "dagster_dev.log"
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml")]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    proc = spawn(cmd, env, log)
    srv = Server(f"http://127.0.0.1:{port}", data_dir, log, proc)
    # `make ui` starts the viewer beside dagster dev
    viewer = spawn([sys.executable, "-m", "dagster_brain.cli", "view"], env, root / "viewer.log")
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, f"dagster dev exited ({proc.returncode}){srv.context()}"
            try:
                with urllib.request.urlopen(srv.base_url + "/server_info", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"no /server_info in {SERVER_START_S} s" + (
                srv.context()
            )
            time.sleep(0.5)
        # the code location is loaded (not an error) and shows the group's six assets
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                _, assets = srv.state()
                if set(assets) == ASSETS:
                    break
            except (AssertionError, KeyError, TypeError, urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"assets {ASSETS} not served{srv.context()}"
            time.sleep(1)
        yield srv
    finally:
        stop_group(viewer)
        stop_group(proc)


def wait_for_run(srv: Server, page) -> str:
    """After the click: the run appears (confirming a launch dialog if one shows), finishes,
    and every asset's latest materialisation comes from a successful run."""
    dialog_button = page.get_by_role("dialog").get_by_role(
        "button", name=re.compile(r"^(Launch run|Materialize|Confirm)")
    )
    deadline = time.monotonic() + RUN_START_S
    while True:
        runs, _ = srv.state()
        if runs:
            break
        if dialog_button.count() and dialog_button.first.is_visible():
            dialog_button.first.click()
        assert time.monotonic() < deadline, f"no run launched in {RUN_START_S} s{srv.context()}"
        time.sleep(1)
    deadline = time.monotonic() + RUN_FINISH_S
    while True:
        runs, assets = srv.state()
        bad = {r: s for r, s in runs.items() if s in {"FAILURE", "CANCELED"}}
        assert not bad, f"run(s) did not succeed: {bad}{srv.context()}"
        done = all(s in TERMINAL for s in runs.values()) and all(assets.values())
        if done:
            assert all(runs[r] == "SUCCESS" for r in assets.values()), (runs, assets)
            return next(iter(assets.values()))
        assert time.monotonic() < deadline, (
            f"not materialised in {RUN_FINISH_S} s: runs {runs}, assets {assets}{srv.context()}"
        )
        time.sleep(2)


def open_thumbnails(page, base_url: str, asset: str, alt: str):
    """Open an asset's page, then its ``thumbnails`` metadata entry; wait until the grid image
    has loaded. Returns the dialog."""
    from playwright.sync_api import expect

    page.goto(base_url + f"/assets/{DATASET}/brain/{asset}")
    key = page.get_by_text("thumbnails", exact=True)
    key.scroll_into_view_if_needed()
    page.locator("tr", has=key).get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    img = dialog.locator(f'img[alt="{alt}"]')
    expect(img).to_have_count(1)
    expect(img).to_be_visible()
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    img.evaluate("i => i.complete ? null : new Promise(ok => { i.onload = ok; i.onerror = ok; })")
    size = img.evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]")
    assert size[0] and size[1] > 0 and size[2] > 0, f"{asset}: thumbnail grid not loaded {size}"
    return dialog


def test_materialize_all_from_the_ui_and_see_the_histogram(server):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "failure.png").unlink(missing_ok=True)
    runs, assets = server.state()
    assert not runs and not any(assets.values()), "the instance should start empty"

    with sync_playwright() as pw:
        # Playwright gives every launch a fresh, empty profile (--user-data-dir) of its own.
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            expect.set_options(timeout=PAGE_TIMEOUT_MS)
            # the "Join the Dagster community" onboarding modal shows on some visits: skip it
            # whenever it is in the way
            page.add_locator_handler(
                page.get_by_role("button", name="Skip", exact=True), lambda b: b.click()
            )
            try:
                # 1. the dataset's asset group, as a graph; nothing materialised yet
                page.goto(server.base_url + GROUP_URL)
                expect(page.get_by_text("uniqueness", exact=True).first).to_be_visible()
                materialize = page.get_by_role("button", name="Materialize all")
                expect(materialize).to_be_enabled()
                page.screenshot(path=ARTIFACTS / "asset_graph_before.png", animations="disabled")

                # 2. materialise everything, wait on the run through the GraphQL API
                materialize.click()
                run_id = wait_for_run(server, page)

                # 3. the graph shows every asset as materialised (on a screen wide enough
                # for the graph of seven assets to be drawn with each node's status)
                page.set_viewport_size({"width": 2400, "height": 1300})
                page.goto(server.base_url + GROUP_URL)
                expect(page.get_by_text("Materialized", exact=True)).to_have_count(len(ASSETS))
                page.screenshot(path=ARTIFACTS / "asset_graph.png", animations="disabled")
                page.set_viewport_size({"width": 1400, "height": 900})

                # 4. the uniqueness asset's page: its metadata, and the histogram plot
                page.goto(server.base_url + f"/assets/{DATASET}/brain/uniqueness")
                key = page.get_by_text("uniqueness_histogram", exact=True)
                key.scroll_into_view_if_needed()
                expect(page.get_by_text(run_id, exact=True).first).to_be_attached()
                page.screenshot(path=ARTIFACTS / "uniqueness_asset.png", animations="disabled")
                page.locator("tr", has=key).get_by_text("[Show Markdown]").click()
                img = page.get_by_role("dialog").locator('img[src^="data:image/png;base64"]')
                expect(img).to_be_visible()
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('img'))"
                    ".some(i => i.src.startsWith('data:image/png;base64')"
                    " && i.complete && i.naturalWidth > 0)"
                )
                width = img.evaluate("i => i.naturalWidth")
                assert width > 0
                page.screenshot(path=ARTIFACTS / "uniqueness_histogram.png", animations="disabled")

                # 5. the thumbnail grids: top and bottom items, duplicate groups side by side
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                dialog = open_thumbnails(
                    page, server.base_url, "uniqueness", "uniqueness: top and bottom items"
                )
                # 9 samples: the 5 most unique, then the 4 least, starting with a planted copy
                expect(dialog).to_contain_text(re.compile(r"bottom: cat/(0|copy)"))
                page.screenshot(path=SCREENSHOTS / "thumbnails.png", animations="disabled")
                dialog = open_thumbnails(page, server.base_url, "dups", "duplicate groups")
                expect(dialog).to_contain_text(re.compile(r"\d+ of \d+ duplicate groups shown"))
                page.screenshot(
                    path=SCREENSHOTS / "duplicates_thumbnails.png", animations="disabled"
                )

                # 6. the health report: its asset links the viewer's page, which opens
                page.goto(server.base_url + f"/assets/{DATASET}/brain/health_report")
                link = page.locator(f'a[href$="/report/{DATASET}"]').first
                expect(link).to_be_attached()
                href = link.get_attribute("href")
                assert href.startswith("http://127.0.0.1:"), href
                page.goto(href)
                heading = page.get_by_role("heading", name=f"Dataset health: {DATASET}")
                expect(heading).to_be_visible()
                expect(page.locator("h2#uniqueness")).to_be_visible()
                page.screenshot(path=SCREENSHOTS / "health_report.png", full_page=True)
            except Exception:
                page.screenshot(path=ARTIFACTS / "failure.png", animations="disabled")
                raise
        finally:
            browser.close()

    # 5. the results are in the store
    store = Store(server.data_dir)
    uniq = store.load_results(DATASET, "uniqueness").set_index("sample_id")
    assert len(uniq) == 9
    assert set(uniq["uniqueness"].nsmallest(2).index) == {"cat/0", "cat/copy"}
    assert len(store.load_results(DATASET, "sim")) == 9
    assert {"cat/0", "cat/copy"} <= set(store.load_results(DATASET, "dups")["sample_id"])
