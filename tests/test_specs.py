"""The brain-keys YAML: valid files load, invalid entries name the key and the field."""

import pytest

from dagster_brain.specs import DEFAULT_SPECS_PATH, SpecError, load_specs, parse_specs

BASE = {
    "datasets": [{"name": "d", "source": {"type": "image_folder", "path": "/imgs"}}],
    "embeddings": [{"key": "e", "dataset": "d"}],
}


def test_bundled_demo_file_loads():
    specs = load_specs(DEFAULT_SPECS_PATH)
    assert {d.name for d in specs.datasets} == {"digits", "shapes"}
    assert any(e.patches_field == "ground_truth" for e in specs.embeddings)
    assert all(r.kind == "uniqueness" for r in specs.brain_runs)


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ([{"brain_key": "u", "kind": "nope", "dataset": "d"}], r"entry 'u'.*field 'kind'"),
        (
            [{"brain_key": "u", "kind": "uniqueness", "dataset": "d", "embeddings": "e", "k": 0}],
            r"entry 'u'.*field 'k'",
        ),
        (
            [{"brain_key": "Bad-Key", "kind": "uniqueness", "dataset": "d", "embeddings": "e"}],
            r"entry 'Bad-Key'.*field 'brain_key'",
        ),
        (
            [{"brain_key": "u", "kind": "uniqueness", "dataset": "d", "embeddings": "zzz"}],
            r"brain run 'u': embeddings 'zzz' is not declared",
        ),
        (
            [
                {
                    "brain_key": "u",
                    "kind": "uniqueness",
                    "dataset": "d",
                    "embeddings": "e",
                    "typo": 1,
                }
            ],
            r"entry 'u'.*field 'typo'",
        ),
        (
            [
                {
                    "brain_key": "u",
                    "kind": "uniqueness",
                    "dataset": "d",
                    "embeddings": "e",
                    "k": 2,
                    "weights": [1],
                }
            ],
            r"entry 'u'.*weights has 1 values",
        ),
    ],
)
def test_invalid_run_entries(runs, message):
    with pytest.raises(SpecError, match=message):
        parse_specs({**BASE, "brain_runs": runs})


def test_invalid_embeddings_and_dataset_entries():
    with pytest.raises(SpecError, match=r"embeddings entry 'x'.*needs 'path'"):
        parse_specs({**BASE, "embeddings": [{"key": "x", "dataset": "d", "source": "array"}]})
    with pytest.raises(SpecError, match=r"datasets entry 'd'.*source"):
        parse_specs({"datasets": [{"name": "d", "source": {"type": "ftp"}}]})
    with pytest.raises(SpecError, match="unknown dataset 'other'"):
        parse_specs({**BASE, "embeddings": [{"key": "x", "dataset": "other"}]})


def test_yaml_file_errors(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("datasets: [unclosed")
    with pytest.raises(SpecError, match="keys.yaml: invalid YAML"):
        load_specs(path)
    with pytest.raises(SpecError, match="does not exist"):
        load_specs(tmp_path / "missing.yaml")
