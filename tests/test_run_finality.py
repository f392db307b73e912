"""No run is left "started" forever and no lock is refused forever: a ``brain`` process killed
with ``kill -9`` has its Dagster run marked FAILURE by the next ``brain`` command, and a
brain-key lock whose heartbeat stopped is taken over whatever its pid is now."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from brain_env import use_brain_env
from click.testing import CliRunner
from conftest import write_images

from dagster_brain import run_liveness
from dagster_brain.cli import main
from dagster_brain.store import Store, StoreError
from dagster_brain.store import locks as lock_module

BRAIN = str(Path(sys.executable).parent / "brain")


# -- stale locks -------------------------------------------------------------------------------


def _forge_lock(store: Store, pid: int, heartbeat_age_s: float) -> None:
    """A lock row on ('d', 'u') held by ``pid`` on this host, last beat that long ago."""
    with store.connect() as conn:
        conn.execute("DELETE FROM brain_locks")
        conn.execute(
            "INSERT INTO brain_locks VALUES ('d', 'u', 'run old', ?, ?, "
            "now() - to_seconds(?), now() - to_seconds(?))",
            [pid, socket.gethostname(), heartbeat_age_s, heartbeat_age_s],
        )


def test_a_stale_lock_is_taken_over_even_when_its_pid_is_alive(tmp_path, caplog):
    """pid reuse: the row's pid runs (it is this test's own), its heartbeat stopped long ago."""
    store = Store(tmp_path / "data")
    store.create_dataset("d")
    _forge_lock(store, os.getpid(), lock_module.LOCK_STALE_S + 60)
    with caplog.at_level(logging.WARNING, logger="dagster_brain"):
        with store.run_lock("d", "u", "run new"):
            rows = store.query("SELECT holder, pid FROM brain_locks")
            assert rows["holder"].tolist() == ["run new"]
    warned = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(warned) == 1
    assert f"run old (pid {os.getpid()} on {socket.gethostname()}" in warned[0]
    assert "heartbeat" in warned[0]
    assert store.query("SELECT * FROM brain_locks").empty


def test_a_lock_with_a_fresh_heartbeat_is_respected(tmp_path):
    store = Store(tmp_path / "data")
    store.create_dataset("d")
    _forge_lock(store, os.getpid(), 5)
    with pytest.raises(StoreError) as info:
        with store.run_lock("d", "u", "run new"):
            pass
    text = str(info.value)
    assert f"being computed by run old (pid {os.getpid()} on {socket.gethostname()}" in text
    assert "last heartbeat" in text and "wait for it to finish" in text
    assert store.query("SELECT holder FROM brain_locks")["holder"].tolist() == ["run old"]


# -- process identity --------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_process_is_known_by_its_pid_and_start_time():
    me = run_liveness.liveness_tags()
    assert me[run_liveness.PID_TAG] == str(os.getpid())
    assert me[run_liveness.HOST_TAG] == socket.gethostname()
    started = me[run_liveness.PID_START_TAG]
    assert run_liveness.why_gone(os.getpid(), started) is None
    assert run_liveness.why_gone(_dead_pid(), None) == "is gone"
    if started:  # where the start time is known, a reused pid is told apart
        reused = run_liveness.why_gone(os.getpid(), started + "0")
        assert reused is not None and "another process" in reused


def test_fail_dead_runs_marks_only_runs_whose_process_is_gone(tmp_path):
    """What a sensor would call: every unfinished tagged run of this host is checked."""
    dead, alive = _dead_pid(), run_liveness.liveness_tags()
    host = socket.gethostname()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        runs = {}
        for name, tags in {
            "dead": {**alive, run_liveness.PID_TAG: str(dead)},
            "alive": alive,
            "other_host": {**alive, run_liveness.PID_TAG: str(dead), run_liveness.HOST_TAG: "x"},
        }.items():
            job = dg.GraphDefinition(name=name, node_defs=[]).to_job()
            run = instance.create_run_for_job(job, tags=tags, status=dg.DagsterRunStatus.STARTED)
            runs[name] = run.run_id
        lines = run_liveness.fail_dead_runs(instance)
        want = f"Dagster run {runs['dead']} (dead): its process {dead} is gone; marked failed"
        assert lines == [want]
        status = {n: instance.get_run_by_id(r).status for n, r in runs.items()}
        assert status == {
            "dead": dg.DagsterRunStatus.FAILURE,
            "alive": dg.DagsterRunStatus.STARTED,
            "other_host": dg.DagsterRunStatus.STARTED,
        }
        failure = instance.all_logs(runs["dead"], of_type=dg.DagsterEventType.RUN_FAILURE)
        assert f"process {dead} on {host}, which executed this run, is gone" in failure[0].message
        assert run_liveness.fail_dead_runs(instance) == []  # already final


# -- a killed `brain materialize` ---------------------------------------------------------------


@pytest.fixture
def stuck_project(tmp_path, request, monkeypatch) -> dict[str, str]:
    """A project whose only dataset ingests an image folder holding a FIFO named like a
    PNG: its ingest step blocks reading it until the process is killed."""
    write_images(tmp_path / "images", 2)
    os.mkfifo(tmp_path / "images" / "zz_blocks.png")
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {
                        "name": "stuck",
                        "source": {"type": "image_folder", "path": str(tmp_path / "images")},
                    }
                ],
                "brain_runs": [],
            }
        )
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        "DAGSTER_HOME": str(home),
        "BRAIN_DATA_DIR": str(tmp_path / "data"),
        "BRAIN_BRAIN_KEYS_PATH": str(keys),
        "BRAIN_CONFIG_PATH": str(tmp_path / "none.json"),
    }
    use_brain_env(request, monkeypatch, env)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # no .env of the repository applies
    return env


def _started_run(home: str, proc: subprocess.Popen) -> dg.DagsterRun:
    """The run once the instance shows it STARTED (the process is stuck in its step)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (Path(home) / "storage").exists():
            with dg.DagsterInstance.from_config(home) as instance:
                runs = instance.get_runs()
                if runs and runs[0].status == dg.DagsterRunStatus.STARTED:
                    logs = instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_START)
                    if logs:
                        return runs[0]
        time.sleep(0.5)
    raise AssertionError("the run never showed STARTED")


def test_a_killed_materialize_is_marked_failed_by_the_next_brain_command(stuck_project):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAIN_", "DAGSTER_"))}
    proc = subprocess.Popen(
        [BRAIN, "materialize"],
        env={**env, **stuck_project},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        run = _started_run(stuck_project["DAGSTER_HOME"], proc)
        assert run.tags[run_liveness.PID_TAG] == str(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    home = Path(stuck_project["DAGSTER_HOME"])
    assert (home / run_liveness.MARKER_DIR / f"{run.run_id}.json").exists()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

    out = CliRunner().invoke(main, ["datasets"])  # any brain command

    assert out.exit_code == 0, out.output
    assert out.stderr.splitlines() == [
        f"note: Dagster run {run.run_id} (brain_all): its process {proc.pid} is gone; marked failed"
    ]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert f"process {proc.pid} on {socket.gethostname()}" in failure.message
        assert "is gone (killed, or out of memory)" in failure.message
    assert not list((home / run_liveness.MARKER_DIR).iterdir())
    again = CliRunner().invoke(main, ["datasets"])  # nothing left to mark: silent
    assert again.exit_code == 0 and again.stderr == ""
    shutil.rmtree(Path(stuck_project["BRAIN_DATA_DIR"]), ignore_errors=True)


def test_the_liveness_sensor_ends_dead_runs_without_a_brain_command(tmp_path):
    """The daemon's sensor `dead_brain_runs` marks a dead run failed and requests nothing."""
    from dagster_brain.sensors.liveness import build_liveness_sensor

    dead = _dead_pid()
    tags = {**run_liveness.liveness_tags(), run_liveness.PID_TAG: str(dead)}
    sensor = build_liveness_sensor()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job = dg.GraphDefinition(name="killed", node_defs=[]).to_job()
        run = instance.create_run_for_job(job, tags=tags, status=dg.DagsterRunStatus.STARTED)
        result = sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(result, dg.SkipReason) and "1 dead runs marked failed" in str(
            result.skip_message
        )
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        again = sensor(dg.build_sensor_context(instance=instance))
        assert again.skip_message == "none dead"
