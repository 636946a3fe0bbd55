"""The hidden context of the Module system: thread-local stacks, and the trace check.

Modules find their scope (params, rng, names), the active state collections, the
output captures and the random-key scopes here. Every stack is pushed and popped by a
context manager, so an exception never leaves a stale entry behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from jax.extend.core import get_opaque_trace_state


class _Stacks(threading.local):
    def __init__(self) -> None:
        self.frames: list[Any] = []  # _Frame objects of the running modules
        self.states: list[Any] = []  # Collections opened by nn.stateful
        self.captures: list[Any] = []  # Collections opened by capture_module_outputs
        self.rngs: list[Any] = []  # _RngScope objects opened by nn.stochastic


stacks = _Stacks()


@contextlib.contextmanager
def pushed(stack: list[Any], item: Any) -> Iterator[Any]:
    """Pushes ``item`` on ``stack`` for the duration of the block."""
    stack.append(item)
    try:
        yield item
    finally:
        popped = stack.pop()
        assert popped is item, "flaxen context stack corrupted"


def current_frame() -> Any:
    """The frame of the innermost running module, or None outside any module."""
    return stacks.frames[-1] if stacks.frames else None


def trace_state() -> Any:
    """An opaque token of the current JAX trace (changes inside jit/grad/vmap/scan).

    Uses the public ``jax.extend.core.get_opaque_trace_state``, made for exactly this
    check: a scope records it on entry, and a write or key draw compares against it.
    """
    return get_opaque_trace_state(convention="flax")


def current_path() -> str:
    """How error messages name the innermost running module (``Conv_0``; see ``_Frame.label``)."""
    frame = current_frame()
    return frame.label() if frame is not None else "<top level>"
