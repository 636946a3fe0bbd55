"""Test configuration shared by the whole suite (tests/ and examples/).

It lives at the root so that it applies to examples/*/train_test.py as well as tests/.

Eight simulated CPU devices so that data-parallel code runs here as it would on a
multi-device host, strict dtype promotion and rank promotion that raises, so that
silent upcasts and accidental broadcasting fail loudly. Warnings are errors (see
pyproject.toml), with narrow, commented exceptions there.
"""

import os

# Must happen before JAX is imported anywhere in the test process.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


import pathlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def flaxen_data():
    """Finds real data under ``$FLAXEN_DATA``, or skips the test saying what is missing.

    ``flaxen_data("mnist-t10k")`` returns the path of that file or folder. Tests never fall
    back to other data silently: without the data they are skipped, with the reason shown in
    pytest's summary (``-ra``).
    """

    def find(name: str) -> pathlib.Path:
        root = os.environ.get("FLAXEN_DATA")
        if not root:
            pytest.skip(f"needs real data {name!r}: set FLAXEN_DATA to the shared data folder")
        path = pathlib.Path(root).resolve() / name
        if not path.exists():
            pytest.skip(f"needs real data: {path} does not exist (FLAXEN_DATA={root})")
        return path

    return find
