"""docs/annotated_mnist.md quotes examples/mnist exactly.

Every Python block of the page is an excerpt: the line before it names the file
(``<!-- excerpt: path/from/repo/root -->``) and the block appears in that file verbatim. A
change to the example that the page does not follow fails here.
"""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "annotated_mnist.md"
MARKER = re.compile(r"^<!-- excerpt: (?P<path>\S+) -->$")


def _blocks():
    text = PAGE.read_text(encoding="utf-8")
    for m in re.finditer(r"```(?:py|python)\n(.*?)^```", text, re.M | re.S):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        yield before, m.group(1)


def test_every_block_is_a_marked_verbatim_excerpt():
    blocks = list(_blocks())
    assert len(blocks) >= 7
    for before, code in blocks:
        marker = MARKER.match(before)
        assert marker, f"block not marked as an excerpt:\n{code[:200]}"
        source = (REPO / marker["path"]).read_text(encoding="utf-8")
        assert code in source, (f"this block of {PAGE.name} is not in {marker['path']} "
                                f"verbatim:\n{code}")


def test_the_page_quotes_the_training_step_and_the_loop():
    code = "".join(c for _, c in _blocks())
    for name in ("def train_step(", "def train_epoch(", "for epoch in range(", "class CNN("):
        assert name in code
