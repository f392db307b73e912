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
    kinds = {r.kind for r in specs.brain_runs}
    assert kinds == {
        "uniqueness",
        "similarity",
        "duplicates",
        "exact_duplicates",
        "unique",
        "mistakenness",
        "hardness",
        "visualization",
        "image_issues",
        "leaky_splits",
        "outliers",
        "representativeness",
        "label_summary",
    }


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


def test_duplicates_and_unique_entries():
    base = {
        **BASE,
        "brain_runs": [
            {
                "brain_key": "sim",
                "kind": "similarity",
                "dataset": "d",
                "embeddings": "e",
                "backend": "qdrant",
            }
        ],
    }
    ok = parse_specs(
        {
            **base,
            "brain_runs": [
                *base["brain_runs"],
                {"brain_key": "dups", "kind": "duplicates", "dataset": "d", "similarity": "sim"},
            ],
        }
    )
    assert ok.brain_runs[1].thresh == "auto"
    with pytest.raises(SpecError, match=r"entry 'dups'.*exactly one of thresh"):
        parse_specs(
            {
                **base,
                "brain_runs": [
                    *base["brain_runs"],
                    {
                        "brain_key": "dups",
                        "kind": "duplicates",
                        "dataset": "d",
                        "similarity": "sim",
                        "thresh": 0.1,
                        "fraction": 0.1,
                    },
                ],
            }
        )
    with pytest.raises(SpecError, match="similarity 'nope' is not a similarity brain key"):
        parse_specs(
            {
                **base,
                "brain_runs": [
                    *base["brain_runs"],
                    {
                        "brain_key": "u",
                        "kind": "unique",
                        "dataset": "d",
                        "similarity": "nope",
                        "count": 3,
                    },
                ],
            }
        )
    dot = [
        {**base["brain_runs"][0], "metric": "dotproduct"},
        {"brain_key": "u", "kind": "unique", "dataset": "d", "similarity": "sim", "count": 3},
    ]
    with pytest.raises(SpecError, match="unique needs a distance.*dotproduct"):
        parse_specs({**base, "brain_runs": dot})
    with pytest.raises(SpecError, match=r"entry 'sim'.*does not support metric|unknown"):
        parse_specs(
            {
                **BASE,
                "brain_runs": [
                    {
                        "brain_key": "sim",
                        "kind": "similarity",
                        "dataset": "d",
                        "embeddings": "e",
                        "backend": "faiss",
                    }
                ],
            }
        )
    with pytest.raises(SpecError, match=r"entry 'sim'.*are secrets"):
        parse_specs(
            {
                **BASE,
                "brain_runs": [
                    {
                        "brain_key": "sim",
                        "kind": "similarity",
                        "dataset": "d",
                        "embeddings": "e",
                        "backend_params": {"api_key": "x"},
                    }
                ],
            }
        )
