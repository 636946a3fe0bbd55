"""Every code block in README.md, docs/ and the examples' READMEs is either run or checked
against the file it quotes.

For each page (README.md, every ``docs/**/*.md`` and every ``examples/*/README.md``, found by
glob so new pages are covered):

* its ```python (or ```py) blocks run in order, in one fresh namespace, in a new Python
  process whose working directory is the repository root, as a reader pasting them one after
  the other would run them. The process sees one CPU device (the suite's simulated eight are
  removed), like a reader's laptop; a page that needs more devices says so in its first block.
* a block of any language preceded by the line ``<!-- excerpt: path/from/repo/root -->`` is
  not run; it must appear verbatim in that file. A line holding only ``...`` (indented or
  not) marks an elision: the pieces between such lines must appear verbatim, in order.
* a ```text block preceded by the line ``<!-- output -->`` shows what the Python blocks
  since the previous output block printed: it must match that output (trailing spaces
  ignored; a ``...`` inside a line or on a line of its own matches any text).
* a page that imports a package which is not installed (the other libraries compared on
  docs/coming_from.md come with the ``docs`` extra) is skipped, naming the package.
* running a page leaves no new files in the repository (pages write to temporary folders).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md")),
         *sorted((REPO / "examples").glob("*/README.md"))]
PAGE_IDS = [str(p.relative_to(REPO)) for p in PAGES]
PYTHON = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<indent> *)(?P<ticks>`{3,})(?P<lang>[\w+-]*)")
EXCERPT = re.compile(r"^\s*<!--\s*excerpt:\s*(?P<path>\S+)\s*-->\s*$")
OUTPUT = re.compile(r"^\s*<!--\s*output\s*-->\s*$")
MARK = "\x1e"  # separates the output of consecutive blocks on the runner's stdout


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    excerpt_of: str | None  # the quoted file, relative to the repository root
    is_output: bool = False  # preceded by <!-- output -->: what the code above printed


def parse_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, start = len(m["indent"]), m["ticks"], i
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        excerpt = EXCERPT.match(prev)
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        assert i < len(lines), f"{page.name}:{start + 1}: code block is never closed"
        i += 1
        blocks.append(Block(page, start + 1, m["lang"].lower(), "\n".join(body) + "\n",
                            excerpt["path"] if excerpt else None, bool(OUTPUT.match(prev))))
    return blocks


# Runs the blocks it reads from stdin (JSON: [[label, code], ...]) in one namespace; a block
# that raises prints which one it was and exits 1.
RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for label, code in json.load(sys.stdin):
    print("\\x1e" + label, flush=True)
    try:
        exec(compile(code, label, "exec"), namespace)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in ("flaxen", "examples"):
            raise
        print(f"\\nMISSING: {e.name} (imported by the code block at {label})", file=sys.stderr)
        sys.exit(3)
    except BaseException:
        traceback.print_exc()
        print(f"\\nFAILED: the code block at {label}", file=sys.stderr)
        sys.exit(1)
"""


def untracked_files() -> set[str] | None:
    """Untracked, non-ignored files of the repository (None when git cannot tell)."""
    if shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True)
    return set(out.stdout.splitlines()) if out.returncode == 0 else None


def test_pages_are_found():
    names = set(PAGE_IDS)
    assert {"README.md", "docs/design.md", "docs/errors.md", "docs/metrics.md", "docs/tour.md",
            "docs/coming_from.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_block_says_its_language(page):
    bare = [b.line for b in parse_blocks(page) if not b.lang]
    assert not bare, (f"{page.name}: code blocks at lines {bare} have no language; write "
                      "```python (run by this test), ```bash, ```text, ... ")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_excerpts_appear_verbatim(page):
    for block in parse_blocks(page):
        if block.excerpt_of is None:
            continue
        source = REPO / block.excerpt_of
        assert source.is_file(), f"{page.name}:{block.line}: {block.excerpt_of} does not exist"
        text, pos = source.read_text(), 0
        for piece in excerpt_pieces(block.code):
            found = text.find(piece, pos)
            assert found >= 0, (
                f"{page.name}:{block.line}: this excerpt is not (or no longer) verbatim in "
                f"{block.excerpt_of}; copy the current text from the file. Not found (after "
                f"the previous piece):\n{piece}")
            pos = found + len(piece)


def excerpt_pieces(code: str) -> list[str]:
    """The parts of an excerpt between elision lines (``...``), each ending with a newline."""
    pieces: list[list[str]] = [[]]
    for line in code.splitlines():
        if line.strip() == "...":
            pieces.append([])
        else:
            pieces[-1].append(line)
    return ["\n".join(p) + "\n" for p in pieces if p]


@pytest.mark.slow  # one Python process per page: about 5-30 s each
@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_python_blocks_run(page):
    blocks = [b for b in parse_blocks(page) if b.lang in PYTHON and b.excerpt_of is None]
    if not blocks:
        pytest.skip(f"{page.relative_to(REPO)} has no Python blocks to run")
    rel = page.relative_to(REPO)
    payload = json.dumps([[f"{rel}:{b.line}", b.code] for b in blocks])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = flags.strip()
    before = untracked_files()
    result = subprocess.run([sys.executable, "-c", RUNNER], input=payload, cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    if result.returncode == 3 and "MISSING: " in result.stderr:
        missing = result.stderr.rsplit("MISSING: ", 1)[1].strip()
        pytest.skip(f"{rel} needs a package that is not installed: {missing}; it comes with "
                    "the docs extra (pip install -e '.[docs]')")
    assert result.returncode == 0, f"{rel}:\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
    check_outputs(page, result.stdout)
    after = untracked_files()
    if before is not None and after is not None:
        assert after <= before, f"{rel} left files in the repository: {sorted(after - before)}"


def check_outputs(page: Path, stdout: str) -> None:
    """Each <!-- output --> block matches what the Python blocks before it printed."""
    printed = {}
    for chunk in stdout.split(MARK)[1:]:
        label, _, text = chunk.partition("\n")
        printed[label] = text
    rel, pending = page.relative_to(REPO), ""
    for block in parse_blocks(page):
        if block.lang in PYTHON and block.excerpt_of is None:
            pending += printed.get(f"{rel}:{block.line}", "")
        elif block.is_output:
            assert output_matches(block.code, pending), (
                f"{rel}:{block.line}: the output shown is not what the code printed.\n"
                f"shown:\n{block.code}\nprinted:\n{pending}")
            pending = ""


def output_matches(shown: str, printed: str) -> bool:
    """Line-insensitive-to-trailing-spaces match where ``...`` stands for any text."""
    norm = lambda t: "\n".join(line.rstrip() for line in t.strip().splitlines())
    pattern = ".*?".join(re.escape(part) for part in norm(shown).split("..."))
    return re.fullmatch(pattern, norm(printed), flags=re.DOTALL) is not None


def test_no_doc_hard_codes_this_machine():
    """Commands and code in the docs use FLAXEN_DATA or flags, never this machine's folders."""
    for page in PAGES:
        for block in parse_blocks(page):
            for bad in ("../shared", "/work/"):
                assert bad not in block.code, f"{page.name}:{block.line} hard-codes {bad!r}"


def test_error_catalogue_lists_every_error_class():
    """docs/errors.md has a section for every exception class flaxen defines."""
    import importlib
    import inspect
    import pkgutil

    import flaxen

    classes = set()
    for info in pkgutil.walk_packages(flaxen.__path__, "flaxen."):
        module = importlib.import_module(info.name)
        classes |= {name for name, obj in vars(module).items()
                    if inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__}
    assert {"FlaxenError", "CheckpointMismatchError", "SummaryError"} <= classes
    headings = re.findall(r"^#{2,3} (.+)$", (REPO / "docs" / "errors.md").read_text(), flags=re.M)
    named = {word for heading in headings for word in re.findall(r"\w+", heading)}
    missing = sorted(classes - named)
    assert not missing, f"docs/errors.md has no section for {missing}; add one (when, example, fix)"


def test_readme_quick_start_ends_with_an_optimizer_step():
    section = (REPO / "README.md").read_text().split("## Quick start", 1)[1]
    block = re.search(r"^```python\n(.*?)^```", section, flags=re.M | re.S)
    assert block, "README.md: the Quick start section has no ```python block"
    code = [ln for ln in block[1].splitlines() if ln.strip() and not ln.startswith("print(")]
    assert re.search(r"\.(apply_gradient|optimize)\(", code[-1]), (
        f"README.md: the quick start should end with an optimizer step, ends with {code[-1]!r}")
