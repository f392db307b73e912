"""A brain-keys YAML with several mistakes: every one is reported at once, with its path."""

import pytest
import yaml

from dagster_brain.specs import SpecError, load_specs, parse_specs

BASE = {
    "datasets": [{"name": "d", "source": {"type": "image_folder", "path": "/imgs"}}],
    "embeddings": [{"key": "e", "dataset": "d"}],
}


def test_three_mistakes_are_reported_together_with_paths_and_suggestions(tmp_path):
    keys = {
        "datasets": [{"name": "d", "source": {"type": "image_folder", "pth": "/imgs"}}],
        "embeddings": [{"key": "e", "dataset": "d", "batch_size": 0}],
        "brain_runs": [
            {"brain_key": "u", "kind": "uniqueness", "dataset": "d", "embeddings": "e"},
            {"brain_key": "v", "kind": "uniquenes", "dataset": "d", "embeddings": "e"},
        ],
    }
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    with pytest.raises(SpecError) as info:
        load_specs(path)
    text = str(info.value)
    lines = text.splitlines()
    assert lines[0] == "keys.yaml: 4 problems:"
    # the unknown field names its path and the field it resembles; so does the missing one
    assert (
        "  datasets[0].source.pth: datasets entry 'd': unknown field 'pth'; did you mean 'path'?"
        in lines
    )
    assert any(line.startswith("  datasets[0].source.path: datasets entry 'd'") for line in lines)
    # the bad value: pydantic's text, without its "Value error," prefix
    assert (
        "  embeddings[0].batch_size: embeddings entry 'e': field 'batch_size': "
        "Input should be greater than or equal to 1" in lines
    )
    assert (
        "  brain_runs[1].kind: brain_runs entry 'v': field 'kind': 'uniquenes' is not a "
        "brain-run kind; did you mean 'uniqueness'?" in lines
    )
    assert "Value error" not in text and "brain_runs[0]" not in text


def test_validator_messages_lose_the_value_error_prefix_and_sections_get_suggestions():
    runs = [
        {
            "brain_key": "dups",
            "kind": "duplicates",
            "dataset": "d",
            "similarity": "s",
            "thresh": 0.1,
            "fraction": 0.2,
        },
        {"brain_key": "v", "kind": "uniqueness", "dataset": "d", "embeddings": "e", "metric": "l2"},
    ]
    with pytest.raises(SpecError) as info:
        parse_specs({**BASE, "brain_run": [], "brain_runs": runs}, origin="k.yaml")
    assert str(info.value).splitlines()[1:] == [
        "  brain_run: unknown section 'brain_run'; did you mean 'brain_runs'?",
        "  brain_runs[0]: brain_runs entry 'dups': give exactly one of thresh (a distance, or "
        "auto) and fraction",
        "  brain_runs[1].metric: brain_runs entry 'v': field 'metric': Input should be 'cosine' "
        "or 'euclidean'",
    ]


def test_reference_mistakes_are_reported_together():
    runs = [
        {"brain_key": "a", "kind": "uniqueness", "dataset": "d", "embeddings": "zzz"},
        {"brain_key": "b", "kind": "unique", "dataset": "nope", "similarity": "s", "count": 2},
    ]
    with pytest.raises(SpecError) as info:
        parse_specs({**BASE, "brain_runs": runs}, origin="k.yaml")
    assert str(info.value).splitlines()[1:] == [
        "  brain_runs[0].embeddings: brain run 'a': embeddings 'zzz' is not declared for "
        "dataset 'd'",
        "  brain_runs[1].dataset: brain run 'b': unknown dataset 'nope'",
        "  brain_runs[1].similarity: brain run 'b': similarity 's' is not a similarity brain "
        "key declared for dataset 'nope'",
    ]


def test_one_mistake_is_one_line():
    with pytest.raises(SpecError) as info:
        parse_specs({**BASE, "embeddings": [{"key": "e", "dataset": "d", "modle": "x"}]}, "k.yaml")
    assert str(info.value) == (
        "k.yaml: embeddings[0].modle: embeddings entry 'e': unknown field 'modle'; "
        "did you mean 'model'?"
    )
