"""Runs the README's code blocks as a user would: bash blocks in bash, Python blocks in the
project's interpreter, YAML blocks parsed (or written to the file a directive names).

A block may carry one directive, an HTML comment on the line above its fence:

- ``<!-- readme-test: skip: REASON -->``  not run (the reason is required);
- ``<!-- readme-test: file: NAME -->``    the block's text is written to ``~/NAME``;
- ``<!-- readme-test: server: URL ... -->`` a command that serves: started, every URL must
  answer, then it is stopped;
- ``<!-- readme-test: long: REASON -->``  run only by the long README test.

Blocks without a language (printed output) are not commands and are not run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

_FENCE = re.compile(r"^\s*```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(skip|file|server|long):\s*(.+?)\s*-->\s*$")
RUN_LANGS = ("bash", "python", "yaml")


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    directive: str | None = None  # skip | file | server | long
    argument: str | None = None  # the directive's reason, file name or URL

    def label(self) -> str:
        first = next((ln for ln in self.code.splitlines() if ln.strip()), "")
        return f"README.md:{self.line} ({self.lang}) {first[:70]}"


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block with its language, line and directive."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].lstrip().startswith("```"):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md:{start + 1}: code block never closed")
        directive = argument = None
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        d = _DIRECTIVE.match(lines[j]) if j >= 0 else None
        if d:
            directive, argument = d.group(1), d.group(2)
        code = textwrap.dedent("\n".join(body)) + "\n"  # a block indented in a list
        blocks.append(Block(lang, code, start + 1, directive, argument))
        i += 1
    return blocks


@dataclass(frozen=True)
class Outcome:
    block: Block
    ok: bool
    output: str  # the end of what it printed
    lines: int = 0  # how many lines it printed in all


def _bash_script(code: str) -> str:
    # stop at the first failing command and name it
    return "set -eo pipefail\ntrap 'echo \"README command failed: $BASH_COMMAND\" >&2' ERR\n" + code


def _serve(block: Block, cwd: Path, env: dict[str, str], timeout_s: float) -> Outcome:
    proc = subprocess.Popen(
        ["bash", "-c", _bash_script(block.code)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + timeout_s
    waiting = block.argument.split()  # every URL must answer
    try:
        while waiting and time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(waiting[0], timeout=5) as r:
                    if r.status == 200:
                        waiting.pop(0)
            except OSError:
                time.sleep(1.0)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    why = f"\n{waiting[0]} never answered (exit {proc.returncode})" if waiting else ""
    return Outcome(block, not waiting, (out or "")[-4000:] + why)


def run_block(block: Block, cwd: Path, env: dict[str, str], timeout_s: float = 900) -> Outcome:
    """Run one block in ``cwd`` with ``env``; a failure carries the command's output."""
    home = Path(env["HOME"])
    if block.directive == "file":
        (home / block.argument).write_text(block.code)
        return Outcome(block, True, f"wrote ~/{block.argument}")
    if block.lang == "yaml":
        try:
            yaml.safe_load(block.code)
        except yaml.YAMLError as err:
            return Outcome(block, False, f"not valid YAML: {err}")
        return Outcome(block, True, "")
    if block.directive == "server":
        return _serve(block, cwd, env, timeout_s)
    if block.lang == "bash":
        argv = ["bash", "-c", _bash_script(block.code)]
    elif block.lang == "python":
        argv = [sys.executable, "-c", block.code]
    else:
        raise ValueError(f"{block.label()}: no runner for {block.lang!r}")
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as err:
        return Outcome(block, False, f"timed out after {timeout_s} s\n{err.stdout or ''}")
    printed = proc.stdout + proc.stderr
    return Outcome(block, proc.returncode == 0, printed[-4000:], len(printed.splitlines()))


def runnable(blocks: list[Block], long: bool = False) -> list[Block]:
    """The blocks a run takes, in README order: files always, long ones only when asked."""
    taken = []
    for b in blocks:
        if b.lang not in RUN_LANGS or b.directive == "skip":
            continue
        if b.directive == "file" or (b.directive == "long") == long:
            taken.append(b)
    return taken


def failures(outcomes: list[Outcome]) -> str:
    """A report of every failed block, with its README line and output."""
    return "\n\n".join(f"{o.block.label()}\n{o.output}" for o in outcomes if not o.ok)
