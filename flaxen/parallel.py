"""Data parallelism with ``jax.jit`` over a ``jax.sharding.Mesh`` (no pmap).

Parameters and optimizer state are replicated on every device of the mesh
(``NamedSharding(mesh, P())``); each batch is split along the mesh's batch axis
(``NamedSharding(mesh, P('batch'))``). A plain ``jax.jit`` train step then runs on all
devices, and because the loss is a mean over the *global* batch, XLA inserts the gradient
all-reduce itself: no ``pmean``, no ``axis_name``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flaxen import parallel
    >>> params = parallel.replicate({"w": jnp.ones(3)})
    >>> batch = parallel.shard_batch(jnp.ones((len(jax.devices()) * 2, 3)))
    >>> batch.sharding.spec
    P('batch',)

With several processes (``jax.distributed.initialize``), ``default_mesh`` spans every
process's devices and ``shard_batch`` takes each process's *local* part of the batch.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxen import errors
from flaxen.traverse_util import path_to_str

BATCH_AXIS = "batch"


@functools.lru_cache(maxsize=8)
def _mesh(device_ids: tuple[int, ...], axis_name: str) -> Mesh:
    by_id = {d.id: d for d in jax.devices()}
    return Mesh(np.array([by_id[i] for i in device_ids]), (axis_name,))


def mesh_of(devices: Any, axis_name: str = BATCH_AXIS) -> Mesh | None:
    """A one-axis ``Mesh`` named ``axis_name`` over ``devices`` (a list of jax devices, in
    order); a ``Mesh`` or None is returned as it is. The one place flaxen builds a mesh
    from a device list (``jax_utils`` uses it for the pre-release ``devices=`` arguments).

    Raises:
        FlaxenError: ``devices`` is neither a Mesh, None, nor a non-empty device list.
    """
    if devices is None or isinstance(devices, Mesh):
        return devices
    if isinstance(devices, list | tuple) and devices and all(
            isinstance(d, jax.Device) for d in devices):
        return Mesh(np.array(devices), (axis_name,))
    raise errors.FlaxenError(
        f"Expected a jax.sharding.Mesh or a non-empty list of devices, got "
        f"{type(devices).__name__}. Example: `jax.sharding.Mesh(np.array(jax.devices()), "
        "('batch',))`.")


def default_mesh(axis_name: str = BATCH_AXIS) -> Mesh:
    """A one-axis mesh named ``axis_name`` over all devices (all processes' devices).

    Returns:
        ``Mesh`` of shape ``{axis_name: jax.device_count()}`` (cached, so it is the same
        object on every call and jit caches hit).
    """
    return _mesh(tuple(d.id for d in jax.devices()), axis_name)


def _place(x: Any, sharding: NamedSharding) -> Any:
    if isinstance(x, jax.Array | np.ndarray | np.generic | int | float | bool | complex):
        return jax.device_put(x, sharding)
    return x


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
    """``tree`` with every array replicated on all devices of ``mesh`` (``P()``).

    Works for an ``Optimizer``, an ``nn.Model``, a params dict, state collections: any
    pytree. Non-array leaves are left as they are.

    Args:
        tree: pytree of arrays (host or device).
        mesh: defaults to ``default_mesh()``.
    """
    mesh = default_mesh() if mesh is None else mesh
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _place(x, sharding), tree)


def _one_copy(path: Any, x: Any) -> Any:
    if not isinstance(x, jax.Array):
        return x
    if len(x.sharding.device_set) == 1:
        return x
    if x.is_fully_replicated:
        return x.addressable_data(0)
    if x.is_fully_addressable:
        return jax.device_put(x, jax.local_devices()[0])
    raise errors.ReplicationError(
        f'Cannot unreplicate the array at "{path_to_str(path) or "<root>"}": it is sharded '
        f"({x.sharding}) across processes, so no process holds a full copy. Gather it "
        "first, e.g. with `jax.experimental.multihost_utils.process_allgather`.")


def unreplicate(tree: Any) -> Any:
    """One copy of every array of ``tree``, on a single (local) device.

    Replicated arrays give their first local copy (no transfer); arrays sharded over local
    devices are gathered onto the first local device.

    Raises:
        ReplicationError: an array is sharded across processes (no full local copy).
    """
    return jax.tree_util.tree_map_with_path(_one_copy, tree)


def shard_batch(batch: Any, mesh: Mesh | None = None, axis_name: str = BATCH_AXIS) -> Any:
    """Splits the leading axis of every array in ``batch`` along ``axis_name`` of ``mesh``.

    Args:
        batch: pytree of arrays ``[global_batch, ...]`` (in a multi-process run: this
            process's ``[local_batch, ...]`` part).
        mesh: defaults to ``default_mesh(axis_name)``.
        axis_name: the mesh axis that carries the batch.

    Returns:
        The same pytree of ``jax.Array`` sharded with ``NamedSharding(mesh, P(axis_name))``.

    Raises:
        BatchShardingError: a leading dimension is not divisible by the number of devices
            on ``axis_name`` (the message gives both sizes and the array's path).
        ReplicationError: ``mesh`` has no axis ``axis_name``, or a leaf is a scalar.
    """
    mesh = default_mesh(axis_name) if mesh is None else mesh
    if axis_name not in mesh.shape:
        raise errors.ReplicationError(
            f'The mesh has no axis named "{axis_name}" (its axes: {dict(mesh.shape)}). Pass '
            "`axis_name=` naming the mesh axis that should carry the batch.")
    n = mesh.shape[axis_name]
    sharding = NamedSharding(mesh, P(axis_name))
    multi = jax.process_count() > 1
    local_n = n // jax.process_count() if multi else n

    def split(path: Any, x: Any) -> Any:
        where = path_to_str(path) or "<root>"
        if np.ndim(x) == 0:
            raise errors.ReplicationError(
                f'The batch leaf at "{where}" is a scalar; every batch array needs a leading '
                "batch axis. Replicate scalars with `parallel.replicate` instead.")
        size = np.shape(x)[0]
        if size % local_n:
            raise errors.BatchShardingError(where, size, local_n, axis_name)
        if multi:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map_with_path(split, batch)
