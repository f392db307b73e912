"""The brain at scale on PostgreSQL + Celery workers, against the same assets on one process.

    python benchmarks/distributed.py [--n 1000000] [--dim 512] [--shards 4] [--workers 2]
        [--backend sklearn|milvus-server] [--no-compare] [--json OUT] [--tmp DIR]

One YAML (dataset ``bench``: N precomputed vectors, 1% of them planted noisy copies, as in
``scale.py``) and one asset selection: the embeddings key from the ``.npy`` (ingest), a kNN
graph built in ``--shards`` blocks (one Dagster step each), uniqueness reading it, a similarity
index (sklearn in the shared data dir, or a Milvus standalone server started here), duplicates
and 100 unique samples. The samples table is written before (not timed).

- ``distributed``: a fresh PostgreSQL database and Redis database, ``--workers`` Celery workers
  (``scripts/distributed.sh workers N --pool=solo``: one step at a time each) and
  ``scripts/distributed.sh materialize --select ...``. Each step's seconds and worker come from
  the run's events in PostgreSQL; peak RSS is sampled over each worker's process group.
- ``one process`` (unless ``--no-compare``): the same selection with ``dagster asset
  materialize`` and the multiprocess executor on a SQLite instance, on a second data dir.

The results of every brain key must be equal between the two; the table prints both times
and their ratio. On a 2-core machine the workers share the same cores the single process
uses: the ratio shows the cost of distributing (queues, PostgreSQL, reading the vectors once
per step), not a speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
DS = "bench"
KEYS = ("graph", "uniq", "sim", "dup", "unique")


def brain_keys(path: Path, a: argparse.Namespace, milvus_uri: str | None) -> Path:
    """The benchmark's YAML."""
    e = {"dataset": DS, "embeddings": "e"}
    sim = {"backend": "sklearn"}
    if milvus_uri:
        sim = {"backend": "milvus", "backend_params": {"uri": milvus_uri}}
    runs = [
        {"brain_key": "graph", "kind": "knn_graph", **e, "k": 16, "shards": a.shards},
        {"brain_key": "uniq", "kind": "uniqueness", **e},
        {"brain_key": "sim", "kind": "similarity", **e, **sim},
        {"brain_key": "dup", "kind": "duplicates", "dataset": DS, "similarity": "sim",
         "thresh": a.dup_thresh, "verify": False},
        {"brain_key": "unique", "kind": "unique", "dataset": DS, "similarity": "sim",
         "count": 100},
    ]  # fmt: skip
    doc = {
        "datasets": [{"name": DS, "source": {"type": "manifest", "path": "samples.csv"}}],
        "embeddings": [{"key": "e", "dataset": DS, "source": "array", "path": "vectors.npy"}],
        "brain_runs": runs,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def selection() -> str:
    return ",".join([f"{DS}/embeddings/e", *(f"{DS}/brain/{k}" for k in KEYS)])


def prepare(data: Path, X: np.ndarray, ids: list[str]) -> None:
    """The samples (written directly: no images to read) and the vectors file."""
    from dagster_brain.store import Store

    data.mkdir(parents=True)
    frame = pd.DataFrame(
        {"sample_id": ids, "filepath": [f"/bench/{i}.jpg" for i in ids], "content_hash": ids}
    )
    Store(data).write_samples(DS, frame)
    frame[["sample_id", "filepath"]].rename(columns={"sample_id": "id"}).to_csv(
        data / "samples.csv", index=False
    )
    np.save(data / "vectors.npy", X)


class Peaks:
    """Peak RSS of process groups (each worker's) or of a process tree, sampled every 0.5 s."""

    def __init__(self, groups: dict[str, int] | None = None, root: int | None = None):
        self.groups, self.root = groups or {}, root
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import psutil

        while not self._stop.is_set():
            now: dict[str, int] = {}
            procs = []
            if self.root is not None:
                with contextlib.suppress(psutil.Error):
                    top = psutil.Process(self.root)
                    procs = [("one process", p) for p in [top, *top.children(recursive=True)]]
            else:
                by_group = {g: name for name, g in self.groups.items()}
                for p in psutil.process_iter():
                    with contextlib.suppress(psutil.Error, OSError):
                        name = by_group.get(os.getpgid(p.pid))
                        if name:
                            procs.append((name, p))
            for name, p in procs:
                with contextlib.suppress(psutil.Error):
                    now[name] = now.get(name, 0) + p.memory_info().rss
            for name, rss in now.items():
                self.peak[name] = max(self.peak.get(name, 0), rss)
            self.peak["all"] = max(self.peak.get("all", 0), sum(now.values()))
            self._stop.wait(0.5)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v / 2**20) for k, v in self.peak.items()}


def step_times(pg_url: str, run_id: str) -> list[dict]:
    """Each step's seconds (start to success) and worker, in start order."""
    from local_cluster import events, step_workers

    start = {e.step_key: e.timestamp for e in events(pg_url, run_id, "STEP_START")}
    done = {e.step_key: e.timestamp for e in events(pg_url, run_id, "STEP_SUCCESS")}
    worker = step_workers(pg_url, run_id)
    return [
        {"step": k, "s": round(done[k] - t, 1) if k in done else None, "worker": worker.get(k)}
        for k, t in sorted(start.items(), key=lambda kv: kv[1])
    ]


def run_distributed(a, tmp: Path, X, ids, milvus_uri) -> dict:
    import local_cluster

    data, home = tmp / "distributed" / "data", tmp / "distributed" / "dagster_home"
    prepare(data, X, ids)
    keys = brain_keys(tmp / "distributed" / "keys.yaml", a, milvus_uri)
    with local_cluster.pg_database("brain_bench") as pg, local_cluster.redis_database() as db:
        env = local_cluster.cluster_env(home, data, keys, pg, db, uuid.uuid4().hex[:8])
        with local_cluster.workers(env, a.workers, "--pool=solo") as w:
            peaks = Peaks(groups=w.pgids)
            started = time.perf_counter()
            out = subprocess.run(
                ["bash", "scripts/distributed.sh", "materialize", "--select", selection()],
                cwd=REPO, env=env, capture_output=True, text=True,
            )  # fmt: skip
            wall = time.perf_counter() - started
            peak = peaks.stop()
            if out.returncode:
                raise SystemExit(
                    out.stdout[-4000:] + out.stderr[-4000:] + local_cluster.tails(tmp, w.logs)
                )
            (run_id, status), *rest = local_cluster.pg_rows(pg, "SELECT run_id, status FROM runs")
            assert not rest and status == "SUCCESS", (run_id, status, rest)
            steps = step_times(pg, run_id)
    return {"wall_s": round(wall, 1), "steps": steps, "peak_rss_mb": peak, "data": str(data)}


def run_one_process(a, tmp: Path, X, ids, milvus_uri) -> dict:
    data, home = tmp / "single" / "data", tmp / "single" / "dagster_home"
    prepare(data, X, ids)
    home.mkdir(parents=True)
    keys = brain_keys(tmp / "single" / "keys.yaml", a, milvus_uri)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(home),
        "BRAIN_DAGSTER_STORAGE_DIR": str(home / "storage"),
        "BRAIN_DATA_DIR": str(data),
        "BRAIN_BRAIN_KEYS_PATH": str(keys),
        "BRAIN_CONFIG_PATH": str(tmp / "no_brain_config.json"),
        "BRAIN_EXECUTOR": "multiprocess",
    }
    cmd = ["dagster", "asset", "materialize", "-m", "dagster_brain.definitions", "-a", "defs"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "--select", selection()], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    peaks = Peaks(root=proc.pid)
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    peak = peaks.stop()
    if proc.returncode:
        raise SystemExit(output[-6000:])
    return {"wall_s": round(wall, 1), "peak_rss_mb": peak, "data": str(data)}


def check(dist: Path, single: Path | None, ids: list[str], src: np.ndarray) -> dict:
    """Planted-pair recall/precision, the graph's stored recall, and (with ``single``) whether
    every brain key's results and the graph's lists are equal."""
    from dagster_brain.store import Store

    got = Store(dist)
    res = got.load_results(DS, "dup")
    found = set()
    for members in res.groupby("group")["sample_id"].apply(list) if len(res) else []:
        found |= {(x, y) for x in members for y in members if x < y}
    n = len(ids)
    copies = [ids[i] for i in range(n - len(src), n)]
    planted = {tuple(sorted((ids[s], c))) for s, c in zip(src.tolist(), copies, strict=True)}
    hit = len(found & planted)
    graph = got.get_run(DS, "graph").upstream["graph"]
    out = {
        "dup_recall": round(hit / max(1, len(planted)), 4),
        "dup_precision": round(hit / max(1, len(found)), 4),
        "graph_exact": graph["exact"],
        "graph_recall": graph["recall_at_k"],
        "graph_shards": graph.get("shards"),
    }
    if single is not None:
        want = Store(single)
        same = {}
        for key in KEYS:
            x, y = (s.load_results(DS, key) for s in (got, want))
            order = [c for c in ("sample_id", "label_id") if c in x.columns]
            x, y = (f.sort_values(order).reset_index(drop=True) for f in (x, y))
            same[key] = bool(x.equals(y))
        a, b = (s.load_extra(DS, "graph", "knn").sort_values("item_id") for s in (got, want))
        cols = ["item_id", "neighbor_rows", "distances"]
        same["graph lists"] = bool(
            a[cols].reset_index(drop=True).equals(b[cols].reset_index(drop=True))
        )
        out["equal"] = same
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", choices=["sklearn", "milvus-server"], default="sklearn")
    p.add_argument("--no-compare", action="store_true", help="skip the one-process run")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--centers", type=int, default=1000)
    p.add_argument("--dup-thresh", type=float, default=1e-3)
    p.add_argument("--json", type=Path)
    p.add_argument("--tmp", type=Path, help="folder for the data dirs (default: /tmp)")
    a = p.parse_args()
    import local_cluster
    from scale import data

    reason = local_cluster.unreachable()
    if reason:
        raise SystemExit(f"distributed benchmark: {reason}")
    with tempfile.TemporaryDirectory(dir=a.tmp) as name, contextlib.ExitStack() as stack:
        tmp = Path(name)
        uri = None
        if a.backend == "milvus-server":
            from streaming_duplicates import milvus_server

            uri = stack.enter_context(milvus_server(tmp / "milvus"))
        t = time.perf_counter()
        X, src = data(a.n, a.dim, a.seed, a.centers)
        ids = [f"s{i:07d}" for i in range(a.n)]
        print(f"data: {a.n:,} x {a.dim} in {time.perf_counter() - t:.1f} s", flush=True)
        dist = run_distributed(a, tmp, X, ids, uri)
        print(f"distributed: {dist['wall_s']} s", flush=True)
        single = None
        if not a.no_compare:
            if uri:  # the same collection names: the one-process run gets a server of its own
                uri = stack.enter_context(milvus_server(tmp / "milvus-single"))
            single = run_one_process(a, tmp, X, ids, uri)
            print(f"one process: {single['wall_s']} s", flush=True)
        del X
        result = check(Path(dist["data"]), single and Path(single["data"]), ids, src)
    doc = {"n": a.n, "dim": a.dim, "shards": a.shards, "workers": a.workers,
           "backend": a.backend, "distributed": dist, "one_process": single, **result}  # fmt: skip
    report(doc)
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1))


def report(doc: dict) -> None:
    dist, single = doc["distributed"], doc["one_process"]
    print(
        f"\nN = {doc['n']:,} x {doc['dim']}, graph in {doc['shards']} shards, "
        f"{doc['workers']} Celery workers (--pool=solo), index: {doc['backend']}"
    )
    print(f"{'step':<58} {'seconds':>8}  worker")
    for s in dist["steps"]:
        print(f"{s['step']:<58} {s['s'] if s['s'] is not None else '-':>8}  {s['worker'] or '-'}")
    peaks = ", ".join(f"{k} {v:,} MB" for k, v in dist["peak_rss_mb"].items())
    print(f"distributed: {dist['wall_s']:.1f} s wall; peak RSS {peaks}")
    if single:
        print(
            f"one process (multiprocess executor, SQLite): {single['wall_s']:.1f} s wall; "
            f"peak RSS {single['peak_rss_mb'].get('all', 0):,} MB; ratio distributed / one "
            f"process {dist['wall_s'] / single['wall_s']:.2f}"
        )
        print("equal results: " + ", ".join(f"{k} {v}" for k, v in doc["equal"].items()))
    print(
        f"graph exact {doc['graph_exact']}, stored recall@k {doc['graph_recall']}, shards "
        f"{doc['graph_shards']}; planted pairs R {doc['dup_recall']:.4f} P "
        f"{doc['dup_precision']:.4f}"
    )


if __name__ == "__main__":
    main()
