"""Every code block of README.md is an example that runs (issue 10).

The fenced blocks are extracted with a small regex (no dependency) and each becomes one
test, named after the line of its opening fence:

* ```python blocks run in a fresh interpreter (this one's executable, cwd a temporary
  directory, a timeout); the code is compiled under README.md's path and real line
  numbers, so a failure's traceback points at the README line.  A block that starts with
  ``>>>`` is a doctest session, checked by ``doctest`` in the child (ELLIPSIS allowed).
* ```sh blocks run with ``bash -e`` in a temporary directory, with this interpreter's
  ``bin`` directory first on PATH (so ``batchmv`` and ``python`` are the ones under test).
* ```text blocks are outputs: reported as skipped, never run.
* An HTML comment on the line before a fence says what else to do with the block:
  ``<!-- readme-test: skip (REASON) -->`` skips it with REASON (a block that cannot run
  here: it needs a GPU, or it is ``make test`` itself), and
  ``<!-- readme-test: signature -->`` checks that a ``batchmv.NAME(...)`` line is the
  function's signature (``inspect.signature`` without annotations).

A fence with another language, or a marker that is not right before a fence, fails.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import batchmv
import support

README = support.REPO_ROOT / "README.md"
TIMEOUT = 180  # seconds per block (one compiles with torch.compile's default backend)

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<what>skip|signature)\b\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")
_ANY_MARKER = re.compile(r"<!--\s*readme-test:")
PYTHON, SHELL, OUTPUT = ("python", "py", "pycon"), ("sh", "bash", "shell"), ("text",)


@dataclass(frozen=True)
class Block:
    line: int  #: 1-based line of the opening fence; the code starts on the next line
    lang: str
    code: str
    marker: str | None  #: "skip", "signature" or None
    reason: str | None

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.lang or 'nolang'}"


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, each with the marker on the line before it."""
    lines = text.splitlines()
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        marker = _MARKER.match(lines[line - 2]) if line >= 2 else None
        found.append(
            Block(
                line,
                match["info"].split()[0].lower() if match["info"].split() else "",
                match["body"],
                marker["what"] if marker else None,
                marker["reason"] if marker else None,
            )
        )
    return found


BLOCKS = blocks(README.read_text(encoding="utf-8"))


def test_extractor_sees_every_block_and_marker():
    text = README.read_text(encoding="utf-8")
    fences = [i + 1 for i, ln in enumerate(text.splitlines()) if re.match(r"^(`{3,}|~{3,})", ln)]
    assert len(fences) == 2 * len(BLOCKS), f"unpaired fences in README.md: fence lines {fences}"
    assert len(BLOCKS) >= 10
    markers = [i + 1 for i, ln in enumerate(text.splitlines()) if _ANY_MARKER.search(ln)]
    attached = {b.line for b in BLOCKS if b.marker}
    for line in markers:
        assert _MARKER.match(text.splitlines()[line - 1]), f"README.md:{line}: malformed readme-test marker"
        assert line + 1 in attached, f"README.md:{line}: a readme-test marker must be right before a fence"


def _child_env() -> dict[str, str]:
    env = support.child_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _failure(block: Block, proc: subprocess.CompletedProcess) -> str:
    return (
        f"README.md:{block.line}: the ```{block.lang} block failed (exit code {proc.returncode})\n"
        f"--- stderr ---\n{proc.stderr[-6000:]}\n--- stdout ---\n{proc.stdout[-2000:]}"
    )


def _check(block: Block, run) -> None:
    """Run ``run()`` (a child process) and fail with the block's line and the child's output."""
    try:
        proc = run()
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"README.md:{block.line}: the ```{block.lang} block ran longer than {err.timeout} s", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(_failure(block, proc), pytrace=False)


def _run_python(block: Block, cwd: Path) -> None:
    padded = "\n" * block.line + block.code  # so that line numbers are README.md's
    code = f"exec(compile({padded!r}, {str(README)!r}, 'exec'), {{'__name__': '__main__'}})\n"
    _check(block, lambda: support.run_python(code, timeout=TIMEOUT, env=_child_env(), cwd=cwd))


_DOCTEST = """
import doctest, sys
test = doctest.DocTestParser().get_doctest({source!r}, {{"__name__": "__main__"}}, "README.md", {path!r}, {line})
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
runner.run(test, out=sys.stderr.write)
sys.exit(1 if runner.failures else 0)
"""


def _run_doctest(block: Block, cwd: Path) -> None:
    code = _DOCTEST.format(source=block.code, path=str(README), line=block.line)
    _check(block, lambda: support.run_python(code, timeout=TIMEOUT, env=_child_env(), cwd=cwd))


def _run_shell(block: Block, cwd: Path) -> None:
    command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    _check(block, lambda: subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=_child_env(), cwd=cwd))


def _check_signature(block: Block) -> None:
    text = block.code.strip()
    match = re.fullmatch(r"batchmv\.(\w+)(\(.*\))", text, re.S)
    assert match, f"README.md:{block.line}: a signature block must be one line batchmv.NAME(...), got {text!r}"
    sig = inspect.signature(getattr(batchmv, match[1]))
    plain = sig.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    assert match[2] == str(plain), f"README.md:{block.line}: README shows {text}, the code has batchmv.{match[1]}{plain}"


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block: Block, tmp_path: Path) -> None:
    if block.marker == "skip":
        pytest.skip(f"README.md:{block.line}: {block.reason or 'marked readme-test: skip'}")
    if block.lang in OUTPUT:
        pytest.skip(f"README.md:{block.line}: ```{block.lang} is output, not run")
    if block.marker == "signature":
        _check_signature(block)
    elif block.lang in PYTHON:
        if block.code.lstrip().startswith(">>>"):
            _run_doctest(block, tmp_path)
        else:
            _run_python(block, tmp_path)
    elif block.lang in SHELL:
        _run_shell(block, tmp_path)
    else:
        pytest.fail(
            f"README.md:{block.line}: no rule for a ```{block.lang or '(no language)'} block: "
            f"use one of {', '.join(PYTHON + SHELL + OUTPUT)}, or mark it <!-- readme-test: skip (why) -->"
        )


@pytest.mark.slow
def test_doctest_padding_matches_readme_lines():
    """A failing example is reported at its README line (so the report can be trusted)."""
    block = Block(3, "python", ">>> 1 + 1\n3\n", None, None)
    code = _DOCTEST.format(source=block.code, path=str(README), line=block.line)
    proc = support.run_python(code, timeout=60)
    assert proc.returncode == 1 and 'README.md", line 4, in README.md' in proc.stderr, proc.stderr


@pytest.mark.slow
def test_python_padding_matches_readme_lines(tmp_path):
    """A failing block's traceback names README.md and the failing line."""
    block = Block(7, "python", "x = 1\nraise RuntimeError('boom')\n", None, None)
    with pytest.raises(pytest.fail.Exception, match=r'(?s)README.md:7: .*File ".*README.md", line 9'):
        _run_python(block, tmp_path)
