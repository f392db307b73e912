"""Batches dropped into an inbox: sensor -> partitions -> add_to_index -> eager refresh."""

import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from PIL import Image

from dagster_brain.definitions import batch_job_name, build_defs
from dagster_brain.factory import batch_partitions, brain_key_asset, embeddings_key
from dagster_brain.ingest.inbox import list_batches
from dagster_brain.resources.store import BrainStoreResource
from dagster_brain.sensors.inbox import InboxCursor, plan_tick
from dagster_brain.similarity.compute import load_index
from dagster_brain.specs import InboxSource
from dagster_brain.store import Store

DATASET = "stream"


def write_batch(inbox, name, n, seed, bad=0, copy_of=None):
    """A batch folder of ``n`` random images (+ ``bad`` unreadable files)."""
    folder = inbox / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    for i in range(bad):
        (folder / f"broken{i}.png").write_bytes(b"not an image")
    if copy_of is not None:
        shutil.copy(copy_of, folder / "copy.png")
    return folder


RUNS = {
    "sim": {"kind": "similarity", "embeddings": "default"},
    "uniqueness": {"kind": "uniqueness", "embeddings": "default"},
    "dups": {"kind": "duplicates", "similarity": "sim", "verify": True},
}


def write_inbox_keys(path: Path, runs=("sim", "uniqueness", "dups"), batch_size=8) -> Path:
    """A brain-keys YAML: dataset ``stream`` from ``<data>/inbox``, the default model, and
    these brain runs (from ``RUNS``)."""
    path.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {
                        "name": DATASET,
                        "source": {"type": "inbox", "path": "inbox", "settle_seconds": 0},
                    }
                ],
                "embeddings": [
                    {
                        "key": "default",
                        "dataset": DATASET,
                        "num_workers": 0,
                        "batch_size": batch_size,
                    }
                ],
                "brain_runs": [{"brain_key": key, "dataset": DATASET, **RUNS[key]} for key in runs],
            }
        )
    )
    return path


@pytest.fixture
def project(tmp_path):
    data = tmp_path / "data"
    (data / "inbox").mkdir(parents=True)
    keys = write_inbox_keys(tmp_path / "brain_keys.yaml")
    defs = build_defs(keys, data)
    with dg.instance_for_test() as instance:
        yield defs, instance, data, Store(data)


class Inbox:
    """Drives the sensor the way the daemon does: tick, register partitions, launch runs."""

    def __init__(self, defs, instance, data):
        self.defs, self.instance, self.data = defs, instance, data
        self.sensor = defs.resolve_sensor_def(f"{DATASET}_inbox")
        self.job = defs.resolve_job_def(batch_job_name(DATASET))
        self.cursor = None
        self.run_keys: list[str] = []
        self.automation_cursor = None
        self.refresh()  # the automation daemon's first evaluation, on an empty inbox

    def tick(self, cursor=...):
        ctx = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor if cursor is ... else cursor,
            resources={"store": BrainStoreResource(data_dir=str(self.data))},
            definitions=self.defs,
        )
        return self.sensor(ctx)

    def run(self, result):
        """Apply a tick's result (what the daemon commits) and run its requests."""
        for req in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        outcomes = []
        for req in result.run_requests:
            assert req.run_key not in self.run_keys, f"run key {req.run_key} requested twice"
            self.run_keys.append(req.run_key)
            outcomes.append(
                self.job.execute_in_process(
                    instance=self.instance, partition_key=req.partition_key, tags=req.tags
                )
            )
        self.cursor = result.cursor
        return outcomes

    def refresh(self):
        """Evaluate the automation conditions and run what they request."""
        evaluation = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.automation_cursor
        )
        self.automation_cursor = evaluation.cursor
        requested = {r.key for r in evaluation.results if evaluation.get_num_requested(r.key) > 0}
        if requested:
            run = self.defs.resolve_job_def("brain_all").execute_in_process(
                instance=self.instance, asset_selection=list(requested)
            )
            assert run.success
        return requested


def batch_metadata(instance, key, partition):
    rec = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records[0]
    return {k: v.value for k, v in rec.asset_materialization.metadata.items()}


def test_three_batches_end_to_end(project):
    defs, instance, data, store = project
    inbox = Inbox(defs, instance, data)
    assert inbox.tick().run_requests == []  # empty inbox: nothing
    sizes = {"b1": 8, "b2": 6, "b3": 7}
    first = None
    for seed, (name, n) in enumerate(sizes.items()):
        folder = write_batch(data / "inbox", name, n, seed, copy_of=first)
        first = first or folder / "img0.png"
        result = inbox.tick()
        assert [r.partition_key for r in result.run_requests] == [name]
        assert result.run_requests[0].tags["dagster/retry_on_asset_or_op_failure"] == "true"
        assert all(o.success for o in inbox.run(result))
        assert inbox.tick().run_requests == []  # the same batch is never taken twice

    total = sum(sizes.values()) + 2  # b2 and b3 each carry a copy of b1/img0
    assert sorted(instance.get_dynamic_partitions(batch_partitions(DATASET).name)) == [
        "b1",
        "b2",
        "b3",
    ]
    assert len(store.sample_ids(DATASET)) == total
    # every sample embedded once: each partition embedded only its own batch
    emb_key = embeddings_key(DATASET, "default")
    per_batch = [batch_metadata(instance, emb_key, b)["batch_vectors"] for b in sizes]
    assert per_batch == [8, 7, 8] and sum(per_batch) == total
    assert store.embedding_sets(DATASET)["count"].tolist() == [total]
    # the index was updated in place (history: built once, then updated), size = total
    history = store.query(
        "SELECT event FROM brain_run_history WHERE brain_key = 'sim' ORDER BY event_at"
    )["event"].tolist()
    assert history[0] == "materialized" and history[1:] and set(history[1:]) == {"updated"}
    index = load_index(store, DATASET, "sim")
    assert index.total_index_size == total and index.backend.count() == total
    collection = index.config.collection
    index.close()

    # whole-dataset scores: requested by the eager condition, then covering every sample
    requested = inbox.refresh()
    assert brain_key_asset(DATASET, "uniqueness") in requested
    assert brain_key_asset(DATASET, "dups") in requested
    uniq = store.load_results(DATASET, "uniqueness")
    assert sorted(uniq["sample_id"]) == store.sample_ids(DATASET)
    dups = store.load_results(DATASET, "dups")
    assert {"b1/img0", "b2/copy", "b3/copy"} <= set(dups["sample_id"])
    assert inbox.refresh() == set()  # nothing new: nothing requested

    # a removed batch leaves the samples, vectors, index and (after refresh) the scores
    shutil.rmtree(data / "inbox" / "b2")
    result = inbox.tick()
    assert [(r.partition_key, r.tags["brain/batch_event"]) for r in result.run_requests] == [
        ("b2", "removed")
    ]
    assert all(o.success for o in inbox.run(result))
    left = total - 7
    assert len(store.sample_ids(DATASET)) == left
    assert not any(s.startswith("b2/") for s in store.sample_ids(DATASET))
    index = load_index(store, DATASET, "sim")
    assert index.total_index_size == left and index.backend.count() == left
    assert index.config.collection == collection  # same collection: updated, not rebuilt
    index.close()
    assert brain_key_asset(DATASET, "uniqueness") in inbox.refresh()
    assert sorted(store.load_results(DATASET, "uniqueness")["sample_id"]) == store.sample_ids(
        DATASET
    )

    # a replaced batch: one image gone, one new; its stale sample leaves everything
    os.remove(data / "inbox" / "b3" / "img1.png")
    write_batch(data / "inbox" / "b3", "extra", 1, seed=9)
    result = inbox.tick()
    assert [(r.partition_key, r.tags["brain/batch_event"]) for r in result.run_requests] == [
        ("b3", "changed")
    ]
    assert all(o.success for o in inbox.run(result))
    ids = store.sample_ids(DATASET)
    assert "b3/img1" not in ids and "b3/extra/img0" in ids
    index = load_index(store, DATASET, "sim")
    assert sorted(index.members["sample_id"]) == ids
    index.close()

    # a restarted sensor that lost its cursor rebuilds it: nothing is taken twice
    again = inbox.tick(cursor=None)
    assert again.run_requests == []
    assert InboxCursor.loads(again.cursor).seen == InboxCursor.loads(inbox.cursor).seen
    # a batch removed and dropped in again with the same content runs again (new run key)
    shutil.copytree(data / "inbox" / "b3", data / "b3_saved")
    shutil.rmtree(data / "inbox" / "b3")
    inbox.run(inbox.tick())
    shutil.copytree(data / "b3_saved", data / "inbox" / "b3")
    result = inbox.tick()
    assert [r.tags["brain/batch_event"] for r in result.run_requests] == ["added"]
    assert all(o.success for o in inbox.run(result))
    assert len(store.batch_sample_ids(DATASET, "b3")) == 8


def test_unreadable_images_are_skipped_and_listed(project):
    defs, instance, data, store = project
    inbox = Inbox(defs, instance, data)
    write_batch(data / "inbox", "b1", 5, seed=1, bad=2)
    outcomes = inbox.run(inbox.tick())
    assert all(o.success for o in outcomes)
    meta = batch_metadata(instance, dg.AssetKey([DATASET, "samples"]), "b1")
    assert meta["skipped"] == 2 and meta["dagster/row_count"] == 5
    assert sorted(f.split(" ")[0] for f in meta["skipped_files"]) == [
        "broken0.png",
        "broken1.png",
    ]
    assert len(store.sample_ids(DATASET)) == 5


def test_tick_waits_for_a_batch_being_written(tmp_path):
    source = InboxSource(type="inbox", path=str(tmp_path), settle_seconds=60)
    write_batch(tmp_path, "early", 2, seed=0)
    listing = list_batches(source, tmp_path)
    batch = listing.batches["early"]
    plan = plan_tick(listing, InboxCursor(), set(), 60, now=batch.newest_mtime + 5)
    assert plan.runs == [] and plan.waiting == ["early"] and plan.cursor.seen == {}
    (tmp_path / "early" / "_SUCCESS").touch()  # the writer says it is done
    listing = list_batches(source, tmp_path)
    plan = plan_tick(listing, InboxCursor(), set(), 60, now=batch.newest_mtime + 5)
    assert [r.batch for r in plan.runs] == ["early"] and plan.new_partitions == ["early"]
    later = plan_tick(listing, plan.cursor, {"early"}, 60)
    assert later.runs == []


def test_bad_batch_names_are_reported(tmp_path):
    source = InboxSource(type="inbox", path=str(tmp_path))
    write_batch(tmp_path, "ok-1", 1, seed=0)
    write_batch(tmp_path, "has space", 1, seed=1)
    listing = list_batches(source, tmp_path)
    assert list(listing.batches) == ["ok-1"]
    assert "has space" in listing.rejected


def test_manifest_ids_owned_by_another_batch_are_refused(tmp_path):
    from dagster_brain.ingest.errors import IngestError
    from dagster_brain.ingest.inbox import ingest_batch
    from dagster_brain.specs import DatasetSpec

    images = write_batch(tmp_path, "imgs", 2, seed=0)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name, ids in (("m1", ["a", "b"]), ("m2", ["b"])):
        rows = [f"{i},{images / 'img0.png'}" for i in ids]
        (inbox / f"{name}.csv").write_text("id,filepath\n" + "\n".join(rows) + "\n")
    spec = DatasetSpec(
        name="m",
        source={"type": "inbox", "path": str(inbox), "layout": "manifest", "label_field": None},
    )
    store = Store(tmp_path / "data")
    assert ingest_batch(store, spec, inbox, "m1").sample_ids == ["a", "b"]
    with pytest.raises(IngestError, match=r"m2\.csv.*'b'.*batch 'm1'"):
        ingest_batch(store, spec, inbox, "m2")
    assert store.batch_sample_ids("m", "m1") == ["a", "b"]  # nothing lost


def test_uniqueness_refresh_updates_its_graph_and_equals_a_full_run(tmp_path):
    import pandas as pd

    from dagster_brain.algorithms.uniqueness import uniqueness_scores
    from dagster_brain.methods import run_uniqueness
    from dagster_brain.specs import UniquenessSpec

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    X[17] = X[15]  # a planted exact copy
    ids = [f"s{i:03d}" for i in range(300)]
    samples = pd.DataFrame({"sample_id": ids, "filepath": [f"/x/{i}.png" for i in ids]})
    samples["content_hash"] = ids
    store = Store(tmp_path)
    store.write_samples("d", samples[:250])
    store.write_embeddings("d", "e", ids[:250], X[:250], model="m")
    spec = UniquenessSpec(brain_key="u", kind="uniqueness", dataset="d", embeddings="e")
    assert not run_uniqueness(spec, store).summary["incremental"]

    store.write_samples("d", samples[250:])  # a batch of 50 arrives
    store.update_embeddings("d", "e", ids[250:], X[250:], model="m")
    store.delete_samples("d", ids[:10])  # 10 leave
    X[20:25] += 0.5  # 5 are re-embedded with new vectors
    store.update_embeddings("d", "e", ids[20:25], X[20:25], model="m")
    out = run_uniqueness(spec, store)
    assert out.summary["incremental"]
    assert out.record.upstream["update"] == {"added": 55, "removed": 10}

    scores, nearest, nearest_dist = uniqueness_scores(X[10:], ids[10:], k=3)
    res = out.results.set_index("sample_id").loc[ids[10:]]
    np.testing.assert_allclose(res["uniqueness"], scores, atol=1e-6)
    np.testing.assert_allclose(res["nearest_distance"], nearest_dist, atol=1e-6)
    assert res.loc["s015", "nearest_id"] == "s017" and res.loc["s015", "nearest_distance"] < 1e-6
    # the stored graph is what a rebuild stores
    knn = store.load_extra("d", "u", "knn")
    assert sorted(knn["item_id"]) == ids[10:]


def test_backend_down_during_an_update_keeps_the_index(tmp_path, monkeypatch, request):
    import pandas as pd
    from brain_env import use_brain_env

    from dagster_brain.methods import run_brain
    from dagster_brain.similarity.backends.base import BackendUnavailable
    from dagster_brain.similarity.compute import SampleChange
    from dagster_brain.specs import SimilaritySpec

    use_brain_env(request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})
    ids = [f"s{i:02d}" for i in range(30)]
    X = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    store = Store(tmp_path / "data")
    store.write_samples("d", pd.DataFrame({"sample_id": ids, "filepath": ids}))
    store.write_embeddings("d", "e", ids[:20], X[:20])
    spec = SimilaritySpec(
        brain_key="sim", kind="similarity", dataset="d", embeddings="e", backend="qdrant"
    )
    before = run_brain(spec, store, run_id="first").record
    store.update_embeddings("d", "e", ids[20:], X[20:])  # a batch arrives
    with pytest.raises(BackendUnavailable, match=r"qdrant.*127\.0\.0\.1:9"):
        run_brain(spec, store, change=SampleChange(ids[20:]), params={"url": "http://127.0.0.1:9"})
    after = store.get_run("d", "sim")
    assert after.run_id == "first" and after.sample_ids == before.sample_ids
    index = load_index(store, "d", "sim")  # still the local collection, still answering
    try:
        assert index.config.collection == before.config["index"]["collection"]
        assert index.total_index_size == index.backend.count() == 20
    finally:
        index.close()
    updated = run_brain(spec, store, change=SampleChange(ids[20:]), run_id="second").record
    assert updated.run_id == "second" and len(updated.sample_ids) == 30


def test_cli_materialize_takes_a_batch_then_the_whole_dataset_runs(project, tmp_path):
    from click.testing import CliRunner

    from dagster_brain.cli import main

    _, _, data, store = project
    write_batch(data / "inbox", "b1", 6, seed=4)
    base = ["materialize", "--brain-keys", str(tmp_path / "brain_keys.yaml")]
    base += ["--data-dir", str(data)]
    env = {"DAGSTER_HOME": "", "BRAIN_CONFIG_PATH": str(tmp_path / "none.json")}
    out = CliRunner().invoke(main, [*base, "--batch", "b1"], env=env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "stream/brain/sim" in out.output and "not materialized" not in out.output
    assert len(store.batch_sample_ids(DATASET, "b1")) == 6
    out = CliRunner().invoke(main, base, env=env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "skipped 3 batch assets" in out.output
    assert len(store.load_results(DATASET, "uniqueness")) == 6


def test_a_predictions_file_is_a_batch_on_existing_samples(project):
    defs, instance, data, store = project
    inbox = Inbox(defs, instance, data)
    write_batch(data / "inbox", "b1", 4, seed=5)
    inbox.run(inbox.tick())
    preds = data / "inbox" / "predictions"
    preds.mkdir()
    rows = [f"b1/img{i},cat,0.{i + 5}" for i in range(4)] + ["nowhere/img9,dog,0.9"]
    (preds / "run1.csv").write_text("id,label,confidence\n" + "\n".join(rows) + "\n")
    result = inbox.tick()
    assert [r.partition_key for r in result.run_requests] == ["predictions-run1"]
    assert all(o.success for o in inbox.run(result))
    labels = store.labels(DATASET, "predictions")
    assert sorted(labels["sample_id"]) == [f"b1/img{i}" for i in range(4)]
    meta = batch_metadata(instance, dg.AssetKey([DATASET, "samples"]), "predictions-run1")
    assert meta["skipped"] == 1 and "nowhere/img9" in meta["skipped_files"][0]
    assert len(store.sample_ids(DATASET)) == 4  # a predictions batch owns no samples


def test_refresh_cron_replaces_the_eager_refresh(tmp_path):
    from dagster_brain.specs import SpecError, parse_specs

    def keys(run_extra, source=None):
        return {
            "datasets": [{"name": "s", "source": source or {"type": "inbox", "path": "in"}}],
            "embeddings": [{"key": "e", "dataset": "s"}],
            "brain_runs": [
                {"brain_key": "u", "kind": "uniqueness", "dataset": "s", "embeddings": "e"}
                | run_extra,
                {"brain_key": "h", "kind": "hardness", "dataset": "s", "label_field": "p"},
            ],
        }

    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump(keys({"refresh_cron": "0 * * * *"})))
    graph = build_defs(path, tmp_path).resolve_asset_graph()
    cond = {k.path[-1]: graph.get(k).automation_condition for k in graph.get_all_asset_keys()}
    assert "on_cron(0 * * * *" in cond["u"].get_label()
    assert cond["h"].get_label() == "eager (past failed batches, landed mid-run)"
    with pytest.raises(SpecError, match="not a cron expression"):
        parse_specs(keys({"refresh_cron": "every hour"}))
    with pytest.raises(SpecError, match="refresh_cron applies to whole-dataset runs on inbox"):
        parse_specs(keys({"refresh_cron": "0 * * * *"}, {"type": "image_folder", "path": "x"}))


def test_renamed_manifest_and_content_that_comes_back(tmp_path):
    from dagster_brain.ingest.inbox import Batch, InboxListing

    def listing(**batches):
        return InboxListing({n: Batch(n, tmp_path, fp, 0.0, True) for n, fp in batches.items()})

    first = plan_tick(listing(m1="f1"), InboxCursor(), set(), 0)
    renamed = plan_tick(listing(m2="f1"), first.cursor, {"m1"}, 0)
    # the old name's removal comes first, so the new name can take its samples over
    assert [(r.batch, r.event) for r in renamed.runs] == [("m1", "removed"), ("m2", "added")]
    # a file moved out of a batch and back: the old fingerprint again, but a new run key
    out = plan_tick(listing(m2="f2"), renamed.cursor, {"m1", "m2"}, 0)
    back = plan_tick(listing(m2="f1"), out.cursor, {"m1", "m2"}, 0)
    keys = [r.run_key for p in (first, renamed, out, back) for r in p.runs]
    assert len(keys) == len(set(keys)) == 5
    # predictions wait while image batches are taken in the same tick
    both = plan_tick(listing(b9="x", **{"predictions-p": "y"}), InboxCursor(), set(), 0)
    assert [r.batch for r in both.runs] == ["b9"] and both.waiting == ["predictions-p"]
    after = plan_tick(listing(b9="x", **{"predictions-p": "y"}), both.cursor, {"b9"}, 0)
    assert [r.batch for r in after.runs] == ["predictions-p"]


def test_cli_refuses_a_batch_that_is_not_in_the_inbox(project, tmp_path):
    from click.testing import CliRunner

    from dagster_brain.cli import main

    _, _, data, _ = project
    args = ["materialize", "--brain-keys", str(tmp_path / "brain_keys.yaml")]
    args += ["--data-dir", str(data), "--batch", "b1x"]
    env = {"DAGSTER_HOME": "", "BRAIN_CONFIG_PATH": str(tmp_path / "none.json")}
    out = CliRunner().invoke(main, args, env=env)
    assert out.exit_code != 0 and "no such batch in the inbox of 'stream'" in out.output


def test_demo_inbox_drops_whole_batches_and_the_example_loads(tmp_path):
    from click.testing import CliRunner

    from dagster_brain.cli import main

    data = tmp_path / "data"
    args = ["demo", "inbox", "--data-dir", str(data), "--count", "2", "--batch-size", "50"]
    out = CliRunner().invoke(main, args, catch_exceptions=False)
    assert out.exit_code == 0 and out.output.count("dropped") == 2, out.output
    out = CliRunner().invoke(main, args[:-4] + ["--batch-size", "50"], catch_exceptions=False)
    assert "batch_003" in out.output
    source = InboxSource(type="inbox", path="inbox/digits_stream")
    listing = list_batches(source, data / "inbox" / "digits_stream")
    assert sorted(listing.batches) == ["batch_001", "batch_002", "batch_003"]
    assert len(list((data / "inbox" / "digits_stream" / "batch_001").rglob("*.png"))) == 50
    example = Path(__file__).resolve().parents[1] / "examples" / "inbox.yaml"
    graph = build_defs(example, data).resolve_asset_graph()
    assert graph.get(dg.AssetKey(["digits_stream", "brain", "umap"])).automation_condition


def test_a_batch_that_lands_while_the_refresh_runs_is_refreshed_again():
    """The refresh requested for batch a finishes after batch b landed: b still triggers a
    refresh (Dagster's plain eager forgets b when the refresh completes)."""
    from dagster_brain.factory import refresh_condition
    from dagster_brain.specs import UniquenessSpec

    spec = UniquenessSpec(kind="uniqueness", brain_key="u", dataset="s", embeddings="e")
    parts = dg.DynamicPartitionsDefinition(name="race__batches")

    @dg.asset(partitions_def=parts)
    def batch():
        return 1

    @dg.asset(deps=[batch], automation_condition=refresh_condition(spec))
    def refresh():
        return 1

    defs = dg.Definitions(assets=[batch, refresh])
    instance = dg.DagsterInstance.ephemeral()
    cursor = None

    def evaluate() -> int:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        return result.total_requested

    def land(name: str) -> None:
        instance.add_dynamic_partitions(parts.name, [name])
        assert dg.materialize([batch], instance=instance, partition_key=name).success

    assert evaluate() == 0  # nothing landed
    land("a")
    assert evaluate() == 1  # a landed: the refresh is requested
    assert evaluate() == 0  # requested once
    land("b")  # b lands while that refresh runs, then the refresh completes
    assert dg.materialize([batch, refresh], instance=instance, selection=[refresh]).success
    assert evaluate() == 1  # b is not forgotten
    assert evaluate() == 0
