"""Device placement helpers with the pre-release names, built on ``flaxen.parallel``.

``replicate`` / ``unreplicate`` place a pytree on every device of a mesh
(``NamedSharding(mesh, P())``) and bring one copy back; ``prefetch_to_device`` puts the
next batches on the devices, split along the batch axis, while the current step runs.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from flaxen.errors import FlaxenError


def _as_mesh(mesh: Any, axis_name: str = "batch") -> Mesh | None:
    """A Mesh, None, or a sequence of devices (the pre-release ``devices=``) -> Mesh/None."""
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    if isinstance(mesh, list | tuple) and mesh and all(isinstance(d, jax.Device)
                                                       for d in mesh):
        return Mesh(np.array(mesh), (axis_name,))
    raise FlaxenError(
        f"Expected a jax.sharding.Mesh or a non-empty list of devices, got "
        f"{type(mesh).__name__}. Example: `jax.sharding.Mesh(np.array(jax.devices()), "
        "('batch',))`.")


def replicate(tree: Any, mesh: Mesh | Sequence[jax.Device] | None = None) -> Any:
    """Every array of ``tree`` replicated on all devices of ``mesh`` (default: all devices).

    ``mesh`` may also be a list of devices, as the pre-release ``devices`` argument. See
    ``flaxen.parallel.replicate``.
    """
    from flaxen import parallel

    return parallel.replicate(tree, _as_mesh(mesh))


def unreplicate(tree: Any) -> Any:
    """One copy of every array of ``tree`` on a single device; see ``parallel.unreplicate``."""
    from flaxen import parallel

    return parallel.unreplicate(tree)


def prefetch_to_device(iterator: Iterable[Any], size: int,
                       mesh: Mesh | Sequence[jax.Device] | None = None,
                       axis_name: str = "batch") -> Iterator[Any]:
    """Yields the batches of ``iterator`` already split across devices, ``size`` ahead.

    Each batch (a pytree of ``[global_batch, ...]`` host arrays) is placed with
    ``flaxen.parallel.shard_batch(batch, mesh, axis_name)``. JAX transfers run
    asynchronously, so keeping ``size`` placed batches queued overlaps the copies with the
    computation of the current step. ``size=0`` places each batch when it is requested.

    Args:
      iterator: any iterable of batch pytrees.
      size: how many placed batches to keep queued (>= 0; 2 is usually enough).
      mesh: the mesh (or a list of devices); defaults to one axis over all devices.
      axis_name: the mesh axis that carries the batch.

    Yields:
      The batches, in order, as sharded ``jax.Array`` pytrees.
    """
    from flaxen import parallel

    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FlaxenError(f"prefetch_to_device: size must be an int >= 0, got {size!r}.")
    mesh = _as_mesh(mesh, axis_name)
    queue: collections.deque[Any] = collections.deque()
    source = iter(iterator)

    def enqueue(n: int) -> None:
        for _ in range(n):
            try:
                batch = next(source)
            except StopIteration:
                return
            queue.append(parallel.shard_batch(batch, mesh, axis_name))

    enqueue(max(size, 1))
    while queue:
        yield queue.popleft()
        enqueue(max(size, 1) - len(queue))
