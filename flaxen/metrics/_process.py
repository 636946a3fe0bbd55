"""Which process writes metrics: process 0 of a multi-process run, unless asked otherwise."""

from __future__ import annotations

import jax


def writes_here(all_processes: bool) -> bool:
    """True when a writer on this process should write.

    In a multi-process run (``jax.distributed.initialize``) every process usually runs the
    same script, so only process 0 writes and the others' writers are silent no-ops (as
    clu's ``just_logging``); ``all_processes=True`` makes every process write (give each its
    own path then). Call only after ``jax.distributed.initialize``: asking for the process
    index starts JAX's backend.
    """
    return all_processes or jax.process_index() == 0
