"""The newer brain methods against planted truth, and their speed, in one command.

    python benchmarks/methods.py [--quick] [--json OUT.json] [--n 50000]

Runs, in order, and prints each table with its bars (PASS / FAIL):

- image issues (``methods_image_issues.py``): planted dark, bright, blurry, low-information,
  odd-size, odd-aspect, grayscale and unreadable files in photographs that scikit-learn and
  matplotlib ship; precision / recall / F1 per kind and images per second, ours beside
  CleanVision (in its own venv under ``benchmarks/.cache``); bar: our F1 >= CleanVision's on
  every planted kind;
- leaky splits and representativeness (``methods_leaks.py``): planted cross-split copies
  (exact, re-encoded, noisy, shifted) at 1 %, ours beside the reference-style rule (cosine
  distance <= 0.2); bar: pair recall >= 0.98 at precision >= 0.95; representativeness AUROC
  of cluster cores against a ring of outliers;
- outliers (``methods_outliers.py``): noise images, other photographs and inverted digits
  planted at 1-5 %; bar: mean AUROC >= 0.95 for every kind and rate;
- representativeness at scale: ``--n`` x 512 clustered vectors (``knn.py``'s mixture), the
  shared kNN graph built once (approximate above 15,000 items), then
  ``cluster-center-downweight`` reading its neighbour lists: seconds and peak RSS.

The exit status is 1 when a bar fails.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def representativeness_at_scale(n: int, dim: int = 512, seed: int = 10) -> dict:
    """Graph build, then representativeness (downweight) from its lists: seconds, peak RSS."""
    from knn import clustered

    from dagster_brain.algorithms.ann_graph import build_graph
    from dagster_brain.algorithms.representativeness import representativeness_scores

    X = clustered(n, dim, seed)
    ids = [f"s{i:07d}" for i in range(n)]
    t = time.perf_counter()
    graph, ann = build_graph(X, ids, 16, "cosine", exact=None)
    graph_s = time.perf_counter() - t
    t = time.perf_counter()
    rep = representativeness_scores(
        X,
        ids,
        method="cluster-center-downweight",
        neighbors=graph.neighbors[:, :5],
        distances=graph.distances[:, :5],
    )
    rep_s = time.perf_counter() - t
    return {
        "n": n,
        "dim": dim,
        "graph_exact": graph.exact,
        "graph_recall": None if ann is None else round(ann.recall_at_k, 4),
        "graph_s": round(graph_s, 2),
        "representativeness_s": round(rep_s, 2),
        "clusters": rep.n_clusters,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sets (about a minute)")
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("--n", type=int, default=50_000, help="items for the representativeness time")
    args = ap.parse_args(argv)

    import methods_image_issues
    import methods_leaks
    import methods_outliers

    out: dict = {}
    passed = True
    print("== image issues")
    issues = methods_image_issues.run(quick=args.quick)
    print(methods_image_issues._table(issues))
    out["image_issues"] = issues
    passed &= all(issues["bars"].values())

    print("\n== leaky splits and representativeness")
    leaks = methods_leaks.run(args.quick)
    methods_leaks.print_result(leaks)
    out["leaks"] = leaks
    passed &= bool(leaks["bar"]["passed"])

    print("\n== outliers")
    outliers = methods_outliers.run(quick=args.quick)
    print(methods_outliers.table(outliers))
    out["outliers"] = outliers
    passed &= bool(outliers["passed"])

    n = min(args.n, 10_000) if args.quick else args.n
    print(f"\n== representativeness at {n:,} x 512 from the shared graph")
    scale = representativeness_at_scale(n)
    print(
        f"graph ({'exact' if scale['graph_exact'] else 'approximate'}, recall "
        f"{scale['graph_recall']}) {scale['graph_s']:.1f} s; representativeness "
        f"(cluster-center-downweight, {scale['clusters']} clusters) "
        f"{scale['representativeness_s']:.1f} s; peak RSS {scale['peak_rss_mb']:.0f} MB"
    )
    out["representativeness_scale"] = scale
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nall bars: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
