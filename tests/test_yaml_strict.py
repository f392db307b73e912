"""What YAML and names silently accepted before: a key given twice (in an entry, in a nested
mapping, two sections of one file), ``k: true`` for a number, a name with a final newline."""

from pathlib import Path

import pytest
import yaml

from dagster_brain.ingest.inbox import list_batches
from dagster_brain.names import BrainNameError, check_name
from dagster_brain.specs import DatasetSpec, InboxSource, SpecError, load_specs
from dagster_brain.store import Store
from dagster_brain.yaml_loader import DuplicateKeyError, load_yaml, parse_yaml

ROOT = Path(__file__).resolve().parents[1]

ENTRY_TWICE = """\
datasets:
  - name: digits
    source: {type: demo, name: digits}
embeddings:
  - key: default
    dataset: digits
brain_runs:
  - brain_key: uniqueness
    kind: uniqueness
    dataset: digits
    embeddings: default
    k: 50
    k: 1
"""

SECTION_TWICE = """\
datasets:
  - name: digits
    source: {type: demo, name: digits}
embeddings: []
datasets:
  - name: shapes
    source: {type: demo, name: shapes}
"""

NESTED_TWICE = """\
datasets:
  - name: stream
    source:
      type: inbox
      path: inbox
      path: other
"""


def test_a_key_twice_in_an_entry_names_the_key_both_lines_and_the_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(ENTRY_TWICE)
    assert yaml.safe_load(ENTRY_TWICE)["brain_runs"][0]["k"] == 1  # what safe_load did
    with pytest.raises(DuplicateKeyError) as err:
        load_yaml(path)
    assert str(err.value).startswith(f"{path}, line 13: key 'k' appears twice in one mapping")
    assert "(lines 12 and 13)" in str(err.value)
    assert (err.value.key, err.value.line, err.value.first_line) == ("k", 13, 12)


def test_a_section_twice_is_refused_not_half_dropped():
    assert [d["name"] for d in yaml.safe_load(SECTION_TWICE)["datasets"]] == ["shapes"]
    with pytest.raises(DuplicateKeyError, match=r"brain_keys.yaml, line 5: section 'datasets' "):
        parse_yaml(SECTION_TWICE, name="brain_keys.yaml")
    with pytest.raises(DuplicateKeyError, match=r"merge them into one section"):
        parse_yaml(SECTION_TWICE)


def test_a_key_twice_in_a_nested_mapping_is_refused():
    with pytest.raises(DuplicateKeyError, match=r"<string>, line 6: key 'path' .*lines 5 and 6"):
        parse_yaml(NESTED_TWICE)
    with pytest.raises(DuplicateKeyError, match=r"key 'c' appears twice .*on line 1"):
        parse_yaml("a: {b: {c: 1, c: 2}}")
    with pytest.raises(DuplicateKeyError, match=r"section True"):
        parse_yaml("true: 1\nTrue: 2\n")  # the same key once parsed


def test_what_is_not_a_repeat_reads_as_safe_load_reads_it():
    text = "base: &b {k: 1, metric: cosine}\nrun:\n  <<: *b\n  k: 2\nlist: [1, 1]\n'1': a\n1: b\n"
    assert parse_yaml(text) == yaml.safe_load(text)
    assert parse_yaml(text)["run"] == {"k": 2, "metric": "cosine"}  # a merge key may be overridden
    assert parse_yaml("") is None
    shipped = [
        ROOT / "brain_assets" / "brain_keys.yaml",
        *sorted((ROOT / "examples").glob("*.yaml")),
    ]
    for path in shipped:
        assert load_yaml(path) == yaml.safe_load(path.read_text()), path
    with pytest.raises(yaml.YAMLError):  # other YAML errors are YAML's, as before
        parse_yaml("a: [1, 2\n")
    assert issubclass(DuplicateKeyError, yaml.YAMLError)  # load_specs reports it as bad YAML


def test_load_specs_refuses_a_key_twice(tmp_path):
    path = tmp_path / "brain_keys.yaml"
    for text in (ENTRY_TWICE, SECTION_TWICE):
        path.write_text(text)
        with pytest.raises(SpecError, match=r"line \d+: (key 'k'|section 'datasets') appears"):
            load_specs(path)


def test_a_boolean_where_a_number_is_expected_is_refused(tmp_path):
    path = tmp_path / "brain_keys.yaml"
    path.write_text(ENTRY_TWICE.replace("    k: 50\n    k: 1\n", "    k: true\n"))
    # either change in notes/strict.md: strict=True, or a validator that refuses only bools
    said = r"(Input should be a valid integer|expected a number, got True)"
    with pytest.raises(SpecError, match=r"brain_runs\[0\](\.k)?: .*field 'k': " + said):
        load_specs(path)


@pytest.mark.parametrize("name", ["ok\n", "ok\n\n", "\nok", "ok ", "o\nk"])
def test_a_name_with_a_newline_is_refused_everywhere(tmp_path, name):
    with pytest.raises(BrainNameError, match="is not a valid name"):
        check_name(name, "dataset")
    store = Store(tmp_path / "data")
    with pytest.raises(BrainNameError):
        store.create_dataset(name)
    assert store.list_datasets() == []
    assert not any("\n" in p.name for p in (tmp_path / "data").rglob("*"))  # no folder made
    with pytest.raises(ValueError, match="should match pattern"):
        DatasetSpec(name=name, source={"type": "demo", "name": "digits"})
    assert check_name("ok", "dataset") == "ok"


def test_a_batch_folder_whose_name_ends_in_a_newline_is_not_a_batch(tmp_path):
    inbox = tmp_path / "inbox"
    for name in ("b1", "b2\n"):
        (inbox / name).mkdir(parents=True)
        (inbox / name / "a.png").write_bytes(b"x")
    listing = list_batches(InboxSource(type="inbox", path="inbox"), inbox)
    assert sorted(listing.batches) == ["b1"]
    assert "a batch name is letters" in listing.rejected["b2\n"]
