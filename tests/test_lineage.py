"""brain lineage: what produced a result, for one sample, and what is stale since."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import sample_frame

import dagster_brain as fob
from dagster_brain.cli import main
from dagster_brain.lineage import lineage


def test_lineage_reports_producers_and_staleness(store):
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(30)]))
    ds = fob.Dataset("toy", store)
    X = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    store.write_embeddings("toy", "e", ds.sample_ids, X, model="m1", model_hash="h1")
    fob.compute_uniqueness(ds, embeddings="e")
    fob.compute_similarity(ds, embeddings="e", brain_key="sim").close()
    fob.compute_near_duplicates(ds, similarity="sim", thresh=0.01)
    info = lineage(store, "toy", "uniqueness", sample_id="s004")
    assert info["upstream"]["embeddings"]["model"] == "m1" and info["stale"] == []
    assert info["sample"]["results"][0]["sample_id"] == "s004"
    assert info["history"][0]["event"] == "materialized"
    assert [d["brain_key"] for d in lineage(store, "toy", "sim")["downstream"]] == ["duplicates"]
    # recompute the embeddings and rebuild the index: both downstream results are stale
    store.write_embeddings("toy", "e", ds.sample_ids, X + 1, model="m1", model_hash="h1")
    assert "embeddings 'e' were recomputed since" in lineage(store, "toy", "uniqueness")["stale"]
    fob.compute_similarity(ds, embeddings="e", brain_key="sim", overwrite=True).close()
    down = lineage(store, "toy", "sim")["downstream"][0]
    assert "similarity index 'sim' was rebuilt since" in down["stale"][0]
    with pytest.raises(KeyError, match="'ghost' is not among"):
        lineage(store, "toy", "uniqueness", sample_id="ghost")
    out = CliRunner().invoke(
        main, ["lineage", "uniqueness", "--sample", "s001", "--data-dir", str(store.data_dir)]
    )
    assert out.exit_code == 0 and json.loads(out.stdout)["sample"]["sample_id"] == "s001"
