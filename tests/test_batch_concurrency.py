"""Inbox batches that run side by side: a batch's index check looks at that batch's own
vectors, a whole-dataset run whose input moved on is a warning, and a batch that lands just
after a refresh was requested is refreshed again."""

import dagster as dg
import numpy as np
import pytest
from brain_env import use_brain_env
from conftest import sample_frame

from dagster_brain.checks import build_run_check, check_results
from dagster_brain.factory import refresh_condition
from dagster_brain.methods import run_brain
from dagster_brain.resources.store import BrainStoreResource
from dagster_brain.similarity.compute import SampleChange, load_index
from dagster_brain.specs import SimilaritySpec, UniquenessSpec
from dagster_brain.store.tables import results_table_name

DS, D = "stream", 8
SIM = SimilaritySpec(kind="similarity", brain_key="sim", dataset=DS, embeddings="default")
UNIQ = UniquenessSpec(kind="uniqueness", brain_key="uniq", dataset=DS, embeddings="default")


@pytest.fixture(autouse=True)
def brain_env(tmp_path, monkeypatch, request):
    use_brain_env(request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})


def land(store, batch: str, n: int, seed: int) -> list[str]:
    """Samples and vectors of one batch (what its ingest and embeddings steps write)."""
    frame = sample_frame([f"/inbox/{batch}/{i}.png" for i in range(n)], prefix=f"{batch}_")
    frame["batch"] = batch
    frame["content_hash"] = [f"{batch}-{i}" for i in range(n)]
    store.write_samples(DS, frame)
    vectors = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    ids = frame["sample_id"].tolist()
    store.update_embeddings(DS, "default", ids, vectors, model="test", source="array")
    return ids


def index_batch(store, ids: list[str]) -> None:
    """A batch run's index update (what the partitioned similarity asset does)."""
    run_brain(SIM, store, change=SampleChange(ids), lock_wait_s=5.0)


def test_a_batch_check_ignores_vectors_another_batch_adds_meanwhile(store):
    index_batch(store, land(store, "b1", 12, seed=1))
    b2 = land(store, "b2", 5, seed=2)
    # b2's update has written its vectors to the backend but not committed yet when b1's
    # check runs: the backend holds 17 vectors, the committed index lists 12
    index = load_index(store, DS, "sim")
    vectors = store.read_embeddings(DS, "default", ids=b2)
    index.backend.upsert(vectors.ids, vectors.vectors)
    index.close()
    passed, meta = check_results(store, SIM, batch="b1")
    assert passed, meta["problems"]
    assert (meta["batch_vectors_held"], meta["backend_count"], meta["rows"]) == (12, 17, 12)
    whole, whole_meta = check_results(store, SIM)  # the whole key's count does differ
    assert not whole and "backend holds 17 vectors, the run indexed 12" in str(
        whole_meta["problems"]
    )
    index_batch(store, b2)  # b2's update commits: both batches and the key agree
    assert check_results(store, SIM, batch="b1")[0] and check_results(store, SIM, batch="b2")[0]
    assert check_results(store, SIM)[0]


def test_a_vector_the_batch_indexed_but_the_backend_lacks_still_fails(store):
    index_batch(store, land(store, "b1", 12, seed=1))
    index_batch(store, land(store, "b2", 5, seed=2))
    index = load_index(store, DS, "sim")
    gone = index.members.loc[index.members["sample_id"] == "b1_003", "id"].tolist()
    index.backend.delete(gone)
    index.close()
    passed, meta = check_results(store, SIM, batch="b1")
    assert not passed
    assert meta["batch_vectors_held"] == 11
    assert "the backend lacks 1 of the 12 vectors batch 'b1' indexed, e.g. ['b1_003']" in str(
        meta["problems"]
    )
    assert check_results(store, SIM, batch="b2")[0]  # b2's vectors are all there


def run_check(spec, store):
    """Execute the Dagster check of ``spec`` as the refresh run does."""
    check = build_run_check(spec)
    resource = BrainStoreResource(data_dir=str(store.data_dir))
    return check(dg.build_asset_check_context(), store=resource)


def test_a_refresh_whose_input_moved_on_is_a_warning_not_a_failure(store):
    land(store, "b1", 12, seed=1)
    run_brain(UNIQ, store)
    land(store, "b2", 5, seed=2)  # lands after the refresh read the key
    passed, meta = check_results(store, UNIQ)
    assert passed and meta["problems"].data == []
    assert "12 rows for 17 input items: embeddings 'default' changed after the run read" in str(
        meta["stale"].data
    )
    result = run_check(UNIQ, store)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN  # not blocking
    run_brain(UNIQ, store)  # the refresh runs again
    passed, meta = check_results(store, UNIQ)
    assert passed and "stale" not in meta
    assert run_check(UNIQ, store).passed
    # a row missing with the input unchanged is still a failure
    with store.connect() as conn:
        table = results_table_name(DS, "uniq")
        conn.execute(f"DELETE FROM {table} WHERE sample_id = ?", ["b1_000"])
    passed, meta = check_results(store, UNIQ)
    assert not passed and "stale" not in meta
    assert "16 rows for 17 input items" in str(meta["problems"].data)
    result = run_check(UNIQ, store)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR


def test_a_batch_that_lands_just_after_the_refresh_was_requested_is_refreshed_again():
    """The refresh is requested, reads the data and finishes; a batch lands before the next
    evaluation (which sees both the request and the batch): the batch is refreshed."""
    spec = UniquenessSpec(kind="uniqueness", brain_key="u", dataset="s", embeddings="e")
    parts = dg.DynamicPartitionsDefinition(name="tie__batches")

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

    def land_batch(name: str) -> None:
        instance.add_dynamic_partitions(parts.name, [name])
        assert dg.materialize([batch], instance=instance, partition_key=name).success

    def run_refresh() -> None:
        assert dg.materialize([batch, refresh], instance=instance, selection=[refresh]).success

    assert evaluate() == 0
    land_batch("a")
    assert evaluate() == 1  # requested
    run_refresh()  # the requested refresh reads a, and finishes
    land_batch("b")  # b lands before the next evaluation
    assert [evaluate() for _ in range(3)] == [1, 0, 0]  # b is refreshed, once
    run_refresh()
    assert [evaluate() for _ in range(2)] == [0, 0]  # nothing new: nothing requested
    land_batch("c")
    assert [evaluate() for _ in range(2)] == [1, 0]  # a plain batch: one refresh


def test_a_batch_renamed_while_its_run_is_in_flight_ends_with_every_score_refreshed(tmp_path):
    """The observed case: the batch's run finds its folder gone, the renamed folder comes in
    as a new batch just after a refresh was requested; uniqueness ends covering it."""
    from test_incremental import DATASET, Inbox, write_batch, write_inbox_keys

    from dagster_brain.definitions import build_defs
    from dagster_brain.factory import brain_key_asset
    from dagster_brain.store import Store

    data = tmp_path / "data"
    (data / "inbox").mkdir(parents=True)
    defs = build_defs(write_inbox_keys(tmp_path / "keys.yaml", runs=("sim", "uniqueness")), data)
    store = Store(data)
    uniqueness = brain_key_asset(DATASET, "uniqueness")
    with dg.instance_for_test() as instance:
        inbox = Inbox(defs, instance, data)
        write_batch(data / "inbox", "b1", 6, seed=1)
        assert all(o.success for o in inbox.run(inbox.tick()))
        assert uniqueness in inbox.refresh()
        write_batch(data / "inbox", "b2", 4, seed=2)
        in_flight = inbox.tick()
        (data / "inbox" / "b2").rename(data / "inbox" / "b2_renamed")  # while its run starts
        assert all(o.success for o in inbox.run(in_flight))
        assert store.batch_sample_ids(DATASET, "b2") == []
        assert uniqueness in inbox.refresh()  # requested (and run) for b2's run
        # the renamed batch lands after that request, before the next evaluation
        result = inbox.tick()
        assert sorted(
            (r.partition_key, r.tags["brain/batch_event"]) for r in result.run_requests
        ) == [
            ("b2", "removed"),
            ("b2_renamed", "added"),
        ]
        assert all(o.success for o in inbox.run(result))
        assert len(store.sample_ids(DATASET)) == 10
        assert uniqueness in inbox.refresh()  # not forgotten
        scored = store.load_results(DATASET, "uniqueness")["sample_id"]
        assert sorted(scored) == store.sample_ids(DATASET)
        assert inbox.refresh() == set()  # and then nothing more
