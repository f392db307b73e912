"""Progress of long loops: run-log messages in a Dagster run (rate-limited), a bar elsewhere."""

import subprocess
import sys

import dagster as dg
import numpy as np
import pytest

from dagster_brain import progress as progress_mod
from dagster_brain.algorithms.knn_graph import build_knn_graph
from dagster_brain.algorithms.visualization import reduce
from dagster_brain.progress import LOG_EVERY_S, progress, run_log, track


class FakeClock:
    """Advances ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _messages(instance, run_id, prefix):
    return [
        e.user_message
        for e in instance.all_logs(run_id)
        if e.user_message and e.user_message.startswith(prefix)
    ]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(progress_mod.ENV_VAR, raising=False)


def test_long_loop_in_a_run_logs_a_bounded_number_of_messages():
    clock = FakeClock(step=1.0)  # 1,000 steps of one (fake) second each

    @dg.asset
    def slow(context: dg.AssetExecutionContext) -> int:
        # no run_log here: the step's own context is found
        return sum(1 for _ in track(range(1000), "slow loop", unit="steps", clock=clock))

    with dg.instance_for_test() as instance:
        result = dg.materialize([slow], instance=instance)
        assert result.success
        msgs = _messages(instance, result.run_id, "slow loop: ")
    assert msgs[0] == "slow loop: started (1,000 steps)"
    assert msgs[-1].startswith("slow loop: done, 1,000/1,000 steps (")
    middle = msgs[1:-1]
    # one message per LOG_EVERY_S of the 1,000 s, never one per step
    assert len(middle) <= 1000 / LOG_EVERY_S
    assert len(middle) >= 1000 / LOG_EVERY_S - 2
    assert middle[0].startswith(f"slow loop: {int(LOG_EVERY_S)}/1,000 steps (")


def test_algorithms_report_to_the_run_log_set_by_the_wrapper():
    X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    ids = [f"s{i}" for i in range(40)]

    @dg.asset
    def algos(context: dg.AssetExecutionContext) -> int:
        with run_log(context.log):  # what the asset factories do around each step
            build_knn_graph(X, ids, k=4)
            reduce(X, ids, method="pca")
        return 0

    with dg.instance_for_test() as instance:
        result = dg.materialize([algos], instance=instance)
        knn = _messages(instance, result.run_id, "kNN graph: ")
        pca = _messages(instance, result.run_id, "pca to 2-d of 40 x 6 vectors")
    assert knn[0] == "kNN graph: 4 cosine neighbours of 40 of 40 rows: started (40 rows)"
    assert knn[-1].startswith("kNN graph: 4 cosine neighbours of 40 of 40 rows: done, 40/40 rows")
    assert pca[0].endswith("(fit on 40): started (40 rows)")
    assert "done, 40/40 rows" in pca[-1]


def test_outside_dagster_a_bar_on_stderr_when_asked(monkeypatch, capsys):
    monkeypatch.setenv(progress_mod.ENV_VAR, "1")
    with progress("uploading", total=250, unit="vectors") as bar:
        for _ in range(5):
            bar.update(50)
    err = capsys.readouterr().err
    assert "uploading" in err and "250/250" in err and "100%" in err


def test_outside_dagster_quiet_when_not_a_terminal_or_disabled(monkeypatch, capsys):
    assert list(track(range(3), "quiet")) == [0, 1, 2]  # pytest's stderr is not a terminal
    monkeypatch.setenv(progress_mod.ENV_VAR, "0")
    assert list(track(range(3), "forced off", bar=True)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_algorithms_do_not_import_dagster():
    code = (
        "import sys, dagster_brain.progress, dagster_brain.algorithms.knn_graph, "
        "dagster_brain.algorithms.visualization, dagster_brain.embedding.pipeline; "
        "print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
