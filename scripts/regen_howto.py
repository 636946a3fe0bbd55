"""Write or refresh a HOWTO diff (docs/howtos/NAME.diff) against the current example.

    python scripts/regen_howto.py NAME                # refresh after the example changed
    python scripts/regen_howto.py NAME --from DIR     # new diff: DIR is an edited copy
    python scripts/regen_howto.py NAME --edit DIR     # write the patched example into DIR

Refresh: the diff is applied to a copy of the current example; if it no longer applies, each
changed file is merged three ways (``git merge-file``): base = the file the diff was written
against (found in this repository's git objects by the diff's ``index`` line), theirs = that
base with the diff applied, ours = the file now. A clean merge writes the new diff; a conflict
leaves the merged files, with conflict markers, in a folder it names: fix them there and run
``--from`` on that folder. Every diff written carries ``index`` lines, so later refreshes can
merge too, as long as the example files it was written against are committed.

``--from DIR``: DIR holds the files of the example folder (for example a copy of examples/mnist
that you edited); the new diff is DIR against the example in the repository.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOWTOS = REPO / "docs" / "howtos"
DEFAULT_EXAMPLE = "examples/mnist"


def git(*args: str, cwd: Path, check: bool = True, stdin: str | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, input=stdin)
    if check and out.returncode:
        sys.exit(f"Error: git {' '.join(args)} failed in {cwd}: {out.stderr.strip()}")
    return out.stdout


def example_of(diff: Path) -> str:
    """The example folder a diff changes (the folder of its first file)."""
    if not diff.exists():
        return DEFAULT_EXAMPLE
    files = re.findall(r"^diff --git a/(\S+) b/", diff.read_text(), re.M)
    return str(Path(files[0]).parent) if files else DEFAULT_EXAMPLE


def copy_example(example: str, dest: Path) -> None:
    shutil.copytree(REPO / example, dest / example,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def diff_against_repo(example: str, edited: Path) -> str:
    """A unified diff (with index lines) that turns the repository's example into ``edited``."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        git("init", "-q", cwd=work)
        copy_example(example, work)
        git("add", "-A", cwd=work)
        git("-c", "user.name=regen", "-c", "user.email=regen@localhost", "commit", "-q",
            "-m", "example", cwd=work)
        shutil.rmtree(work / example)
        shutil.copytree(edited, work / example,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        git("add", "-A", cwd=work)
        return git("diff", "--cached", "--no-color", "--no-renames", cwd=work)


def apply_to_copy(diff: Path, example: str, work: Path) -> bool:
    copy_example(example, work)
    out = subprocess.run(["git", "apply", str(diff)], cwd=work, capture_output=True, text=True)
    return out.returncode == 0


def merge_three_ways(diff: Path, example: str, work: Path) -> bool:
    """Rebuilds the patched example in ``work`` by three-way merges; False on a conflict."""
    text = diff.read_text()
    ok = True
    for m in re.finditer(r"^diff --git a/(\S+) b/\S+\n(?:.*\n)*?index (\w+)\.\.\w+", text, re.M):
        path, base_id = m[1], m[2]
        base = git("cat-file", "-p", base_id, cwd=REPO, check=False)
        if not base:
            sys.exit(f"Error: {diff.name} was written against a version of {path} that this "
                     "repository does not hold (blob {base_id}); fix the hunks by hand.")
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            (t / path).parent.mkdir(parents=True)
            (t / path).write_text(base)
            one = re.search(rf"^diff --git a/{re.escape(path)} b/.*?(?=^diff --git |\Z)",
                            text, re.M | re.S)
            assert one is not None
            git("apply", "-", cwd=t, stdin=one[0])
            theirs = t / "theirs"
            shutil.copy(t / path, theirs)
            (t / "base").write_text(base)
            out = subprocess.run(["git", "merge-file", "-L", "now", "-L", "base", "-L",
                                  diff.name, str(work / path), str(t / "base"), str(theirs)],
                                 capture_output=True, text=True)
            ok &= out.returncode == 0
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the HOWTO's name: docs/howtos/NAME.diff")
    parser.add_argument("--from", dest="source", type=Path,
                        help="an edited copy of the example folder")
    parser.add_argument("--edit", type=Path, help="write the patched example into this folder")
    parser.add_argument("--example", help=f"the example folder (default: the diff's, or "
                        f"{DEFAULT_EXAMPLE})")
    args = parser.parse_args()
    diff = HOWTOS / f"{args.name}.diff"
    example = args.example or example_of(diff)
    if args.source:
        diff.write_text(diff_against_repo(example, args.source.resolve()))
        print(f"wrote {diff.relative_to(REPO)}")
        return
    if not diff.exists():
        sys.exit(f"Error: {diff} does not exist; write a new HOWTO with --from DIR.")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clean = apply_to_copy(diff, example, work)
        if not clean:
            shutil.rmtree(work / example)
            copy_example(example, work)
            clean = merge_three_ways(diff, example, work)
        if args.edit or not clean:
            dest = (args.edit or Path(tempfile.mkdtemp(prefix=f"howto_{args.name}_"))).resolve()
            shutil.copytree(work / example, dest, dirs_exist_ok=True)
            if not clean:
                sys.exit(f"Error: {diff.name} conflicts with the current {example}. The merged "
                         f"files, with conflict markers, are in {dest}: fix them, then run "
                         f"python scripts/regen_howto.py {args.name} --from {dest}")
            print(f"the patched {example} is in {dest}; edit it, then run "
                  f"python scripts/regen_howto.py {args.name} --from {dest}")
            return
        diff.write_text(diff_against_repo(example, work / example))
    print(f"wrote {diff.relative_to(REPO)}")


if __name__ == "__main__":
    main()
