"""The examples behave alike: the same flags for the same things, each with real help text.

Each example's flags are read from ``train.py --helpxml`` in a subprocess (they are defined
when the program runs), so this also checks that every example starts.
"""

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.multiprocess_util import REPO, cpu_env

EXAMPLES = ["mnist", "imagenet", "lm1b"]
COMMON = {"output_dir", "data_dir", "resume", "seed", "batch_size", "coordinator_address",
          "num_processes", "process_id"}


def _own_flags(example: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, f"examples/{example}/train.py", "--helpxml"],
                         cwd=REPO, env=cpu_env(1), capture_output=True, text=True, timeout=300)
    assert out.stdout.startswith("<?xml"), out.stderr[-2000:]  # absl exits 1 after --helpxml
    root = ET.fromstring(out.stdout)
    return {f.findtext("name"): f.findtext("meaning") or "" for f in root.iter("flag")
            if (f.findtext("file") or "").endswith("train.py")}


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES)
def test_same_flags_and_real_help(example):
    own = _own_flags(example)
    missing = COMMON - set(own)
    assert not missing, f"examples/{example} lacks {sorted(missing)}"
    assert {"num_epochs", "num_steps"} & set(own)
    for name, meaning in own.items():
        words = meaning.replace(name.replace("_", " "), "").split()
        assert len(words) >= 2, f"--{name} of examples/{example} has no real help: {meaning!r}"
