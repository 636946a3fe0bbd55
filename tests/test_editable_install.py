"""`pip install -e .` gives an install that type checkers see, and the package metadata.

The editable install goes into a new virtual environment (without dependencies: only how
flaxen itself is found matters); mypy, run from another folder with that environment's
interpreter, must resolve flaxen's own types rather than report a missing module.
"""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NETWORK_HINTS = ("Could not find a version", "No matching distribution", "Failed to establish",
                 "Network is unreachable", "Temporary failure in name resolution")


def test_metadata_license_and_classifiers():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression
    assert project["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert "Typing :: Typed" in project["classifiers"]
    assert not any(c.startswith("License ::") for c in project["classifiers"]), (
        "with an SPDX `license`, License :: classifiers are redundant (and rejected by PyPI)")


@pytest.mark.slow
def test_editable_install_is_visible_to_mypy(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e",
                              str(ROOT)], capture_output=True, text=True, timeout=600)
    if install.returncode != 0 and any(h in install.stderr for h in NETWORK_HINTS):
        pytest.skip(f"pip could not fetch the build backend (setuptools): "
                    f"{install.stderr.strip().splitlines()[-1]}")
    assert install.returncode == 0, install.stderr[-3000:]
    user = tmp_path / "elsewhere"
    user.mkdir()
    (user / "use.py").write_text("from flaxen import nn\n\nreveal_type(nn.Model)\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--python-executable", str(python),
                             "--no-incremental", "use.py"], cwd=user, capture_output=True,
                            text=True, timeout=600)
    assert "flaxen.nn.base.Model" in result.stdout, result.stdout + result.stderr
    assert "import-not-found" not in result.stdout, result.stdout
    shutil.rmtree(venv, ignore_errors=True)
