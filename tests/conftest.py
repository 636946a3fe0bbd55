"""Fixtures shared by tests/. Global JAX settings are in the root conftest.py."""

import jax
import pytest


@pytest.fixture
def rng() -> jax.Array:
    """A fixed PRNG key, so every test is reproducible."""
    return jax.random.PRNGKey(0)
