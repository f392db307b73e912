"""The kNN graph generated for readers that share vectors: planned from the YAML, placed
upstream of its readers, read by them, with the same results as without it."""

import logging

import dagster as dg
import pandas as pd
import pytest
import yaml
from test_assets_materialize import make_folder, write_keys

from dagster_brain.definitions import build_defs
from dagster_brain.factory import brain_key_asset, embeddings_key, health_report_key
from dagster_brain.methods.knn_graph import (
    KnnGraphSpec,
    generated_key,
    plan_graphs,
    shared_graphs,
)
from dagster_brain.methods.uniqueness import run_uniqueness
from dagster_brain.similarity.runs import run_duplicates
from dagster_brain.specs import NAME, parse_specs
from dagster_brain.store import Store

SIM = {"brain_key": "sim", "kind": "similarity", "dataset": "pets", "embeddings": "default"}
DUPS = {"brain_key": "dups", "kind": "duplicates", "dataset": "pets", "similarity": "sim"}
GRAPH = brain_key_asset("pets", "knn_default_cosine")


def runs(*entries, embeddings=("e",)):
    """Parsed brain runs of dataset ``d`` (embeddings keys ``embeddings``)."""
    return parse_specs(
        {
            "datasets": [{"name": "d", "source": {"type": "image_folder", "path": "x"}}],
            "embeddings": [{"key": e, "dataset": "d"} for e in embeddings],
            "brain_runs": [{"dataset": "d", **e} for e in entries],
        }
    ).brain_runs


UNIQ = {"brain_key": "u", "kind": "uniqueness", "embeddings": "e"}
SIM_E = {"brain_key": "s", "kind": "similarity", "embeddings": "e"}
DUP_E = {"brain_key": "dup", "kind": "duplicates", "similarity": "s"}


def test_two_readers_of_one_key_get_one_graph_with_their_widest_k():
    plan = plan_graphs(runs(UNIQ, SIM_E, DUP_E))
    assert [(g.brain_key, g.embeddings, g.metric, g.k) for g in plan.generated] == [
        ("knn_e_cosine", "e", "cosine", 16)  # duplicates' first pass (16) > uniqueness k=3
    ]
    assert plan.reads == {("d", "u"): "knn_e_cosine", ("d", "dup"): "knn_e_cosine"}
    # a reader asking for more neighbours widens the graph
    wide = shared_graphs(runs(UNIQ | {"k": 20}, SIM_E, DUP_E))
    assert [g.k for g in wide] == [20]
    # duplicates confirming 30 candidates per item on the images read 30
    verified = shared_graphs(runs(UNIQ, SIM_E, DUP_E | {"neighbours": 30}))
    assert [g.k for g in verified] == [30]
    # ... but not with an explicit threshold (the radius graph's first pass: 16)
    fixed = shared_graphs(runs(UNIQ, SIM_E, DUP_E | {"neighbours": 30, "thresh": 0.1}))
    assert [g.k for g in fixed] == [16]
    # two uniqueness runs on the same vectors share one too
    two = shared_graphs(runs(UNIQ, UNIQ | {"brain_key": "u2", "k": 5}))
    assert [(g.brain_key, g.k) for g in two] == [("knn_e_cosine", 16)]


def test_no_graph_for_a_single_reader_or_different_vectors():
    assert plan_graphs(runs(UNIQ)).generated == []
    assert plan_graphs(runs(SIM_E, DUP_E)).generated == []
    # another metric, or another embeddings key: not the same neighbours
    assert shared_graphs(runs(UNIQ | {"metric": "euclidean"}, SIM_E, DUP_E)) == []
    other = UNIQ | {"embeddings": "f"}
    assert shared_graphs(runs(other, SIM_E, DUP_E, embeddings=("e", "f"))) == []
    # unique (k-center greedy) reads no neighbours: it does not count as a reader
    spread = {"brain_key": "sp", "kind": "unique", "similarity": "s", "count": 3}
    assert shared_graphs(runs(UNIQ, SIM_E, spread)) == []
    # a dotproduct index is refused for duplicates when the YAML is read; alone: no reader
    dot = runs(UNIQ, SIM_E | {"metric": "dotproduct"})
    assert plan_graphs(dot).reads == {}


def test_a_declared_graph_is_used_instead(caplog):
    mine = {"brain_key": "mine", "kind": "knn_graph", "embeddings": "e", "k": 24}
    plan = plan_graphs(runs(UNIQ, SIM_E, DUP_E, mine))
    assert plan.generated == []
    assert plan.reads == {("d", "u"): "mine", ("d", "dup"): "mine"}
    # one reader and a declared graph: the reader still depends on it
    assert plan_graphs(runs(UNIQ, mine)).reads == {("d", "u"): "mine"}
    # a declared graph narrower than a reader needs: that reader computes its own (logged)
    narrow = mine | {"k": 8}
    with caplog.at_level(logging.WARNING, logger="dagster_brain"):
        plan = plan_graphs(runs(UNIQ, SIM_E, DUP_E, narrow))
    assert plan.generated == [] and plan.reads == {("d", "u"): "mine"}
    assert "'dup' on 'd' needs 16 neighbours" in caplog.text and "'mine' k=8" in caplog.text


def test_generated_keys_are_valid_brain_keys_and_a_taken_one_is_refused():
    assert generated_key("clip", "euclidean") == "knn_clip_euclidean"
    long_a, long_b = "a" * 40 + "_x" + "b" * 20, "a" * 40 + "_x" + "c" * 20
    keys = [generated_key(k, "euclidean") for k in (long_a, long_b)]
    assert keys[0] != keys[1]
    for key in keys:
        assert len(key) <= 60 and key.endswith("_euclidean")
        KnnGraphSpec(kind="knn_graph", dataset="d", brain_key=key, embeddings=long_a)
    import re

    assert all(re.match(NAME, k) for k in keys)
    taken = {"brain_key": "knn_e_cosine", "kind": "exact_duplicates"}
    with pytest.raises(ValueError, match="'knn_e_cosine' on 'd': this brain key is the one"):
        plan_graphs(runs(UNIQ, SIM_E, DUP_E, taken))


@pytest.fixture
def pets(tmp_path):
    folder = tmp_path / "images"
    make_folder(folder)
    return folder


def test_definitions_put_one_graph_upstream_of_both_readers(pets, tmp_path):
    keys = write_keys(tmp_path / "keys.yaml", pets, extra_runs=[SIM, DUPS])
    defs = build_defs(keys, tmp_path / "data")
    graph = defs.resolve_asset_graph()
    generated = [k for k in graph.get_all_asset_keys() if k.path[-1].startswith("knn_")]
    assert generated == [GRAPH]
    node = graph.get(GRAPH)
    assert node.parent_keys == {embeddings_key("pets", "default")}
    assert node.child_keys == {
        brain_key_asset("pets", "uniqueness"),
        brain_key_asset("pets", "dups"),
        health_report_key("pets"),  # the report reads every brain run of the dataset
    }
    assert GRAPH in graph.get(brain_key_asset("pets", "dups")).parent_keys
    checks = {c.asset_key for spec in defs.asset_checks for c in spec.check_specs}
    assert GRAPH in checks  # its results_valid check
    assert GRAPH in defs.resolve_job_def("brain_all").asset_layer.selected_asset_keys

    # one reader of the key: no graph
    keys = write_keys(tmp_path / "one.yaml", pets, extra_runs=[SIM])
    graph = build_defs(keys, tmp_path / "data").resolve_asset_graph()
    assert not [k for k in graph.get_all_asset_keys() if k.path[-1].startswith("knn_")]

    # a declared graph of the same vectors: none generated, the readers depend on it
    mine = {"brain_key": "mine", "kind": "knn_graph", "dataset": "pets", "embeddings": "default"}
    keys = write_keys(tmp_path / "declared.yaml", pets, extra_runs=[SIM, DUPS, mine])
    graph = build_defs(keys, tmp_path / "data").resolve_asset_graph()
    assert GRAPH not in graph.get_all_asset_keys()
    assert graph.get(brain_key_asset("pets", "mine")).child_keys == {
        brain_key_asset("pets", "uniqueness"),
        brain_key_asset("pets", "dups"),
        health_report_key("pets"),
    }


def test_materialised_readers_read_the_graph_with_the_same_results(pets, tmp_path):
    keys = write_keys(tmp_path / "keys.yaml", pets, extra_runs=[SIM, DUPS])
    data = tmp_path / "data"
    defs = build_defs(keys, data)
    result = dg.materialize([*defs.assets, *defs.asset_checks], resources=defs.resources)
    assert result.success
    order = [e.asset_key for e in result.get_asset_materialization_events()]
    assert order.index(GRAPH) < order.index(brain_key_asset("pets", "uniqueness"))
    assert order.index(GRAPH) < order.index(brain_key_asset("pets", "dups"))
    assert all(e.passed for e in result.get_asset_check_evaluations())
    store = Store(data)
    graph_run = store.get_run("pets", "knn_default_cosine")
    assert (graph_run.kind, graph_run.config["k"]) == ("knn_graph", 16)
    uniq, dups = store.get_run("pets", "uniqueness"), store.get_run("pets", "dups")
    assert uniq.upstream["knn_graph"] == "knn_default_cosine"
    assert dups.upstream["knn_graph"] == "knn_default_cosine"
    with_graph = store.load_results("pets", "uniqueness"), store.load_results("pets", "dups")
    assert set(with_graph[1]["sample_id"]) == {"cat/0", "cat/copy"}

    # without the graph, the same runs compute their own neighbours: the same results
    store.delete_run("pets", "knn_default_cosine")
    specs = {r.brain_key: r for r in parse_specs(yaml.safe_load(keys.read_text())).brain_runs}
    u = run_uniqueness(specs["uniqueness"].model_copy(update={"brain_key": "u_plain"}), store)
    d = run_duplicates(specs["dups"].model_copy(update={"brain_key": "d_plain"}), store)
    assert "knn_graph" not in u.record.upstream and "knn_graph" not in d.record.upstream
    pd.testing.assert_frame_equal(u.results, with_graph[0])
    pd.testing.assert_frame_equal(d.results, with_graph[1])


def _reread_config(monkeypatch):
    """Make the brain config read the environment again."""
    import dagster_brain.config as config_module

    reset = getattr(config_module, "reset_brain_config", None)
    if reset is not None:
        reset()
    else:
        monkeypatch.setattr(config_module, "_brain_config", None)


def test_the_generated_graph_is_asset_owned(pets, tmp_path, monkeypatch):
    from dagster_brain.owned import owner_of

    keys = write_keys(tmp_path / "keys.yaml", pets, extra_runs=[SIM, DUPS])
    data = tmp_path / "data"
    monkeypatch.setenv("BRAIN_DATA_DIR", str(data))
    monkeypatch.setenv("BRAIN_BRAIN_KEYS_PATH", str(keys))
    _reread_config(monkeypatch)
    try:
        owner = owner_of(Store(data), "pets", "knn_default_cosine")
        assert owner is not None and owner.asset == "pets/brain/knn_default_cosine"
        spec = owner.spec
        assert (spec.kind, spec.embeddings, spec.k) == ("knn_graph", "default", 16)
        assert owner_of(Store(data), "pets", "knn_other_cosine") is None
    finally:
        monkeypatch.undo()
        _reread_config(monkeypatch)


def test_on_an_inbox_dataset_the_graph_refreshes_with_its_readers(tmp_path):
    from test_incremental import write_inbox_keys

    keys = write_inbox_keys(tmp_path / "keys.yaml")
    defs = build_defs(keys, tmp_path / "data")
    graph = defs.resolve_asset_graph()
    key = brain_key_asset("stream", "knn_default_cosine")
    node = graph.get(key)
    assert node.partitions_def is None  # the whole dataset, like its readers
    assert node.automation_condition.get_label() == "eager (past failed batches, landed mid-run)"
    assert node.child_keys == {
        brain_key_asset("stream", "uniqueness"),
        brain_key_asset("stream", "dups"),
        health_report_key("stream"),
    }
    refresh = defs.resolve_sensor_def("stream_refresh")
    assert key in refresh.asset_selection.resolve(graph)
    # readers on a shared refresh_cron: the graph refreshes on that cron too
    spec = yaml.safe_load(keys.read_text())
    for run in spec["brain_runs"]:
        if run["kind"] != "similarity":
            run["refresh_cron"] = "0 * * * *"
    keys.write_text(yaml.safe_dump(spec))
    graph = build_defs(keys, tmp_path / "data").resolve_asset_graph()
    assert "on_cron(0 * * * *" in graph.get(key).automation_condition.get_label()


def test_after_a_batch_the_refresh_builds_the_graph_and_the_readers_read_it(tmp_path):
    from test_incremental import Inbox, write_batch, write_inbox_keys

    data = tmp_path / "data"
    (data / "inbox").mkdir(parents=True)
    defs = build_defs(write_inbox_keys(tmp_path / "keys.yaml"), data)
    store = Store(data)
    with dg.instance_for_test() as instance:
        inbox = Inbox(defs, instance, data)
        first = write_batch(data / "inbox", "b1", 8, seed=0)
        assert all(o.success for o in inbox.run(inbox.tick()))
        write_batch(data / "inbox", "b2", 5, seed=1, copy_of=first / "img0.png")
        assert all(o.success for o in inbox.run(inbox.tick()))
        requested = inbox.refresh()
        key = brain_key_asset("stream", "knn_default_cosine")
        assert key in requested and brain_key_asset("stream", "uniqueness") in requested
        graph_run = store.get_run("stream", "knn_default_cosine")
        assert len(store.load_results("stream", "knn_default_cosine")) == 14
        for reader in ("uniqueness", "dups"):
            assert store.get_run("stream", reader).upstream["knn_graph"] == graph_run.brain_key
        assert {"b1/img0", "b2/copy"} <= set(store.load_results("stream", "dups")["sample_id"])
        assert inbox.refresh() == set()  # nothing new: nothing requested
        # a later batch: the graph is updated in place (not rebuilt) and read again
        write_batch(data / "inbox", "b3", 3, seed=2)
        assert all(o.success for o in inbox.run(inbox.tick()))
        assert key in inbox.refresh()
        graph_run = store.get_run("stream", "knn_default_cosine")
        assert graph_run.upstream["update"] == {"added": 3, "removed": 0}
        assert len(store.load_results("stream", "knn_default_cosine")) == 17
        for reader in ("uniqueness", "dups"):
            assert store.get_run("stream", reader).upstream["knn_graph"] == graph_run.brain_key
