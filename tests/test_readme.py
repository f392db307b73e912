"""The README is executable: every block a user is told to run runs as written, in README
order, in the repository root, with a clean environment whose home holds small stand-ins of
the user's files the README names (``~/pets``, ``~/pets.csv``, ``~/gt.json``, …).

The first block is ``make demo``: the rest run against the demo store it makes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from readme_runner import Block, Outcome, failures, parse_blocks, run_block, runnable

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CLASSES = ("cat", "dog", "bird")
# Make-believe user files: what the README's commands name.
PER_CLASS = 10


def _image(path: Path, seed: int, size: int = 48) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_user_files(home: Path) -> None:
    """The files the README's examples read, small: an image folder with one planted copy,
    a manifest with logits, a COCO set with predictions, a predictions table."""
    for c, cls in enumerate(CLASSES):
        for i in range(PER_CLASS):
            _image(home / "pets" / cls / f"{i:03d}.png", seed=100 * c + i)
    # a planted duplicate: dog/009 is a copy of cat/003
    (home / "pets" / "dog" / "009.png").write_bytes((home / "pets/cat/003.png").read_bytes())
    rows = ["id,filepath,label,logits"]
    for c, cls in enumerate(CLASSES):
        for i in range(PER_CLASS):
            logits = [0.0, 0.0, 0.0]
            logits[c] = 2.0
            rows.append(f'{cls}/{i:03d},pets/{cls}/{i:03d}.png,{cls},"{json.dumps(logits)}"')
    (home / "pets.csv").write_text("\n".join(rows) + "\n")
    preds = ["filepath,label,confidence"]
    for c, cls in enumerate(CLASSES):
        for i in range(PER_CLASS):
            guess = CLASSES[(c + 1) % 3] if i == 0 else cls  # one wrong guess per class
            preds.append(f"pets/{cls}/{i:03d}.png,{guess},0.9")
    (home / "preds.csv").write_text("\n".join(preds) + "\n")
    images, annotations, results = [], [], []
    for i in range(3):
        name = f"img{i}.png"
        _image(home / "images" / name, seed=900 + i, size=64)
        images.append({"id": i + 1, "file_name": name, "width": 64, "height": 64})
        box = [8.0 + i, 8.0, 24.0, 20.0]
        annotations.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": box, "area": 480}
        )
        results.append({"image_id": i + 1, "category_id": 1 + i % 2, "bbox": box, "score": 0.9})
    categories = [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (home / "gt.json").write_text(json.dumps(coco))
    (home / "preds.json").write_text(json.dumps(results))


def user_env(home: Path) -> dict[str, str]:
    """A clean shell, as after cloning: the venv on PATH, nothing else exported."""
    return {
        "PATH": f"{REPO / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "BRAIN_PROGRESS": "0",
    }


@pytest.fixture(scope="module")
def user_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    write_user_files(home)
    return home


def _run(blocks: list[Block], home: Path) -> list[Outcome]:
    outcomes = [run_block(block, REPO, user_env(home)) for block in blocks]
    report = failures(outcomes)
    assert not report, f"README commands failed:\n\n{report}"
    return outcomes


BLOCKS = parse_blocks(README.read_text())
TAKEN = runnable(BLOCKS)


def _block_id(block: Block) -> str:
    words = next((ln for ln in block.code.split("\n") if ln.strip()), "").split()[:3]
    return "-".join([f"L{block.line}", block.lang] + [w for w in words if w.isidentifier()])


def test_readme_starts_with_make_demo_and_skips_stay_the_exception():
    assert TAKEN[0].code.split()[:2] == ["make", "demo"], "the README starts with make demo"
    skipped = [b for b in BLOCKS if b.directive == "skip"]
    assert all(b.argument for b in skipped)
    assert len(skipped) <= 6, [b.label() for b in skipped]


@pytest.fixture(scope="module")
def readme_state() -> dict[str, bool]:
    return {"demo_ok": False}


@pytest.mark.parametrize("block", TAKEN, ids=[_block_id(b) for b in TAKEN])
def test_readme_commands_run_as_written(block: Block, user_home, readme_state):
    """Each block in README order, one test each (each with its own time limit); the blocks
    after ``make demo`` run against the demo store it made."""
    first = block is TAKEN[0]
    if not first and not readme_state["demo_ok"]:
        pytest.fail("make demo (the README's first block) did not succeed: its test says why")
    outcome = _run([block], user_home)[0]
    if first:
        # make demo: one line per asset and a summary, not Dagster's debug stream
        assert outcome.lines <= 60, f"make demo printed {outcome.lines} lines:\n{outcome.output}"
        assert "materialized" in outcome.output and "found:" in outcome.output
        readme_state["demo_ok"] = True


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BRAIN_README_LONG"), reason="set BRAIN_README_LONG=1")
def test_readme_long_commands(user_home):
    """The benchmarks the README quotes (minutes each): BRAIN_README_LONG=1 to run them."""
    _run(runnable(parse_blocks(README.read_text()), long=True), user_home)


def test_a_broken_readme_command_fails_naming_it(tmp_path):
    """The runner catches a broken command: the report names its line and the command."""
    text = (
        "intro\n\n```bash\nbrain --help\n```\n\n"
        "```bash\nbrain runs list digits --no-such-option\n```\n\n"
        "<!-- readme-test: skip: needs a cluster -->\n```bash\nkubectl apply\n```\n"
    )
    blocks = parse_blocks(text)
    assert [b.line for b in blocks] == [3, 7, 12]
    assert blocks[2].directive == "skip" and blocks[2].argument == "needs a cluster"
    home = tmp_path / "home"
    home.mkdir()
    outcomes = [run_block(b, REPO, user_env(home)) for b in runnable(blocks)]
    assert [o.ok for o in outcomes] == [True, False]
    report = failures(outcomes)
    assert "README.md:7 (bash) brain runs list digits --no-such-option" in report
    assert "README command failed: brain runs list digits --no-such-option" in report
    assert "No such option" in report


def test_breaking_a_command_of_this_readme_fails(tmp_path):
    """The same runner on this README with one real command broken reports that command."""
    text = README.read_text()
    good = "brain lineage uniqueness --dataset digits --sample digit_0356"
    assert text.count(good) == 1
    broken = [b for b in parse_blocks(text.replace(good, good.replace("--sample", "--sampl")))]
    block = next(b for b in runnable(broken) if "brain lineage" in b.code)
    home = tmp_path / "home"
    home.mkdir()
    outcome = run_block(block, REPO, user_env(home))
    assert not outcome.ok
    assert "README command failed: brain lineage uniqueness --dataset digits --sampl " in (
        failures([outcome])
    )
