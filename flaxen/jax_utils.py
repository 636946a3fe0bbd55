"""The pre-release ``jax_utils``: per-device copies for ``jax.pmap``, and device prefetch.

Two ways to run data-parallel exist in flaxen (see ``docs/parallelism.md``):

* **pmap (the pre-release way, kept so old programs run unchanged).** ``replicate(tree)``
  stacks one copy per local device on a new leading axis, laid out exactly as ``jax.pmap``
  takes its inputs (so pmap maps over it without a copy); ``unreplicate(tree)`` returns
  device 0's copy (``x[0]``) of a replicated tree or of a pmap output.
* **jit over a Mesh (what flaxen teaches).** ``flaxen.parallel.replicate`` /
  ``unreplicate`` / ``shard_batch``; no leading device axis, no ``pmean``.

``prefetch_to_device`` serves both: each batch is split along its leading axis over the
devices, so a ``[n_devices, per_device, ...]`` batch from ``common_utils.shard`` arrives in
the pmap layout and a ``[global_batch, ...]`` batch arrives sharded for jit.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxen import parallel
from flaxen.errors import FlaxenError, ReplicationError, ScanAxisError
from flaxen.traverse_util import path_to_str

_DEVICE_AXIS = "devices"


def is_stacked(x: Any) -> bool:
    """Whether ``x`` is laid out as pmap lays out a mapped value: row ``i`` of axis 0 on
    device ``i`` of a one-axis mesh (what ``replicate`` and ``jax.pmap`` outputs give)."""
    if not isinstance(x, jax.Array) or x.ndim == 0:
        return False
    sharding = x.sharding
    if not isinstance(sharding, NamedSharding) or len(sharding.mesh.axis_names) != 1:
        return False
    axis = sharding.mesh.axis_names[0]
    spec = tuple(sharding.spec) + (None,) * x.ndim
    return (spec[0] == axis and all(s is None for s in spec[1:x.ndim])
            and x.shape[0] == sharding.mesh.size)


def _where(path: Any) -> str:
    return path_to_str(path) or "<root>"


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """One copy of ``tree`` per device, stacked on a new leading axis, for ``jax.pmap``.

    Every leaf ``x`` becomes an array of shape ``[len(devices), *x.shape]`` whose row ``i``
    lives on ``devices[i]`` (a ``NamedSharding`` over a one-axis mesh: the layout
    ``jax.pmap`` takes without copying). Python numbers become arrays, as in the
    pre-release.

    Args:
      tree: any pytree of arrays and numbers: an ``Optimizer``, an ``nn.Model``, a state
        ``Collection``, a train-state dataclass.
      devices: the devices, in pmap's order; default ``jax.local_devices()``.

    Returns:
      The replicated pytree (same structure).

    Raises:
      ReplicationError: a leaf is already replicated (replicating twice), or is not an
        array or number.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ReplicationError(
            f"jax_utils.replicate: expected `devices` to be a non-empty list of jax devices "
            f"(default jax.local_devices()), got {devices!r}. For jit over a Mesh use "
            "`flaxen.parallel.replicate(tree, mesh)` instead.")
    mesh = parallel.mesh_of(devices, _DEVICE_AXIS)
    assert mesh is not None  # devices is a non-empty list here
    sharding = NamedSharding(mesh, P(_DEVICE_AXIS))

    def one(path: Any, x: Any) -> jax.Array:
        if is_stacked(x):
            raise ReplicationError(
                f'jax_utils.replicate: the leaf at "{_where(path)}" is already replicated '
                f"(shape {x.shape}, one row per device). Expected a tree with one copy, got "
                "a replicated one: replicate once, or `jax_utils.unreplicate(tree)` first.")
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            raise ReplicationError(
                f'jax_utils.replicate: the leaf at "{_where(path)}" is sharded across '
                "processes; expected one full copy. Gather it first (e.g. "
                "`jax.experimental.multihost_utils.process_allgather`).")
        try:
            value = x if isinstance(x, jax.Array) else jnp.asarray(x)
        except (TypeError, ValueError) as e:
            raise ReplicationError(
                f'jax_utils.replicate: the leaf at "{_where(path)}" is a '
                f"{type(x).__name__}; expected an array or a number. Keep non-array values "
                "out of the tree (e.g. `struct.field(pytree_node=False)`).") from e
        row = value[None]
        shards = [jax.device_put(row, d) for d in devices]
        return jax.make_array_from_single_device_arrays(
            (len(devices),) + value.shape, sharding, shards)

    return jax.tree_util.tree_map_with_path(one, tree)


def unreplicate(tree: Any) -> Any:
    """Device 0's copy of a replicated tree or of a ``jax.pmap`` output (``x[0]``).

    Raises:
      ReplicationError: the tree is not replicated (no leading device axis), or is
        replicated over a Mesh (use ``flaxen.parallel.unreplicate`` for that).
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not leaves:
        return tree
    if not any(is_stacked(x) for _, x in leaves):
        raise ReplicationError(_not_replicated_message(leaves[0][0], leaves[0][1]))

    def one(path: Any, x: Any) -> Any:
        if not is_stacked(x):
            raise ReplicationError(_not_replicated_message(path, x))
        first = min(x.addressable_shards, key=lambda s: s.index[0].start or 0)
        return first.data.reshape(x.shape[1:])

    return jax.tree_util.tree_map_with_path(one, tree)


def _not_replicated_message(path: Any, x: Any) -> str:
    got = f"{type(x).__name__}"
    if isinstance(x, jax.Array | np.ndarray):
        got += f" of shape {tuple(x.shape)}"
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1 and (
            x.is_fully_replicated):
        return (f'jax_utils.unreplicate: the leaf at "{_where(path)}" ({got}) is replicated '
                "over a Mesh (jit data parallelism), not stacked per device for pmap. Use "
                "`flaxen.parallel.unreplicate(tree)` (or `optimizer.unreplicate()`).")
    return (f'jax_utils.unreplicate: expected a replicated tree (every leaf with a leading '
            f'device axis, one row per device, as `jax_utils.replicate` or `jax.pmap` give), '
            f'got {got} at "{_where(path)}". This tree is not replicated: use it as it is. '
            "For host arrays with a device axis use `jax.tree.map(lambda x: x[0], tree)`.")


def pmean(xs: Any, axis_name: Any) -> Any:
    """Deprecated alias of ``jax.lax.pmean`` (warns, as the pre-release did)."""
    warnings.warn("use jax.lax.pmean instead", DeprecationWarning, stacklevel=2)
    return jax.lax.pmean(xs, axis_name)


def _parse_spec(spec: Any) -> jax.ShapeDtypeStruct:
    """``shape`` (float32) or ``(shape, dtype)``: a pair whose first item is iterable."""
    if isinstance(spec, list | tuple) and len(spec) == 2 and isinstance(spec[0], Iterable):
        return jax.ShapeDtypeStruct(tuple(spec[0]), jnp.dtype(spec[1]))
    return jax.ShapeDtypeStruct(tuple(spec), jnp.float32)


def _dependent_outputs(jaxpr: Any) -> list[bool]:
    """For each output of ``jaxpr``: whether it may depend on an input (conservative)."""
    tainted = {id(v) for v in jaxpr.invars}
    for eqn in jaxpr.eqns:
        if any(id(v) in tainted for v in eqn.invars):
            tainted.update(id(v) for v in eqn.outvars)
    return [id(v) in tainted for v in jaxpr.outvars]


def partial_eval_by_shape(fn: Callable[..., Any], input_spec: Iterable[Any], *args: Any,
                          **kwargs: Any) -> Any:
    """Runs ``fn`` on abstract inputs: what does not depend on them comes back computed.

    ``fn(*inputs, *args, **kwargs)`` is traced with inputs built from ``input_spec``;
    outputs that depend on the input values come back as ``jax.ShapeDtypeStruct``, the
    others (e.g. initialized parameters) as concrete arrays. Only the input-independent
    part is compiled and run (the rest is removed as dead code), so no FLOPs are spent
    on the inputs.

    Args:
      fn: the function.
      input_spec: an iterable of shapes (float32) or ``(shape, dtype)`` pairs.
      *args, **kwargs: further (concrete) arguments of ``fn``.

    Returns:
      ``fn``'s output pytree, mixing arrays and ``jax.ShapeDtypeStruct``s.
    """
    specs = [_parse_spec(s) for s in input_spec]

    def flat(*inputs: Any) -> list[Any]:
        return jax.tree.leaves(fn(*inputs, *args, **kwargs))

    closed, out_shapes = jax.make_jaxpr(flat, return_shape=True)(*specs)
    depends = _dependent_outputs(closed.jaxpr)
    keep = [i for i, d in enumerate(depends) if not d]

    def independent() -> list[Any]:
        outs = flat(*[jnp.zeros(s.shape, s.dtype) for s in specs])
        return [outs[i] for i in keep]

    values = dict(zip(keep, jax.jit(independent)())) if keep else {}
    treedef = jax.tree.structure(jax.eval_shape(lambda *xs: fn(*xs, *args, **kwargs), *specs))
    leaves = [values.get(i, s) for i, s in enumerate(out_shapes)]
    return jax.tree.unflatten(treedef, leaves)


def prefetch_to_device(iterator: Iterable[Any], size: int,
                       mesh: Mesh | Sequence[jax.Device] | None = None,
                       axis_name: str = "batch", *,
                       devices: Sequence[jax.Device] | None = None) -> Iterator[Any]:
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
      devices: the pre-release keyword: a list of devices (instead of ``mesh``).

    Yields:
      The batches, in order, as sharded ``jax.Array`` pytrees.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FlaxenError(f"prefetch_to_device: size must be an int >= 0, got {size!r}.")
    mesh = parallel.mesh_of(mesh if devices is None else list(devices), axis_name)
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


# -- scan_in_dim -----------------------------------------------------------------------


def _scan_axes(axis: int | Sequence[int], ndim: int, where: str, what: str) -> tuple[int, ...]:
    """``axis`` as non-negative axes of an array of rank ``ndim``, checked."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not axes or any(isinstance(a, bool) or not isinstance(a, int) for a in axes):
        raise ScanAxisError(f'In "{where}": scan_in_dim axis: expected an int or a non-empty '
                            f"tuple of ints, got {axis!r}.")
    if any(not -ndim <= a < ndim for a in axes):
        raise ScanAxisError(
            f'In "{where}": scan_in_dim axis: expected axes of {what}, which has rank {ndim} '
            f"(valid axes {-ndim}..{ndim - 1}), got axis={axis!r}. Pass the axis that holds "
            "the sequence, e.g. axis=1 for (batch, time, features) inputs.")
    norm = tuple(a % ndim for a in axes)
    if len(set(norm)) != len(norm):
        raise ScanAxisError(f'In "{where}": scan_in_dim axis: expected distinct axes, got '
                            f"axis={axis!r} ({norm} for {what} of rank {ndim}).")
    return norm


def _to_front(x: Any, axes: tuple[int, ...]) -> Any:
    rest = [d for d in range(x.ndim) if d not in axes]
    return jnp.transpose(x, axes + tuple(rest))


def _from_front(x: Any, axes: tuple[int, ...]) -> Any:
    rest = [d for d in range(x.ndim) if d not in axes]
    return jnp.transpose(x, tuple(int(i) for i in np.argsort(axes + tuple(rest))))


def scan_in_dim(body_fn: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any,
                axis: int | Sequence[int] = (0,), keepdims: bool = False) -> tuple[Any, Any]:
    """``jax.lax.scan`` along one or more axes of ``xs`` (the pre-release helper).

    ``body_fn(carry, x) -> (carry, y)`` may be a Module class, e.g.
    ``nn.LSTMCell.partial(name='lstm_cell')``, called inside another module's ``apply``:
    every step then uses the same parameters (``lstm_cell``). At init the first step
    runs once before the scan to create them (so ``init`` works under ``jax.jit`` and
    ``init_by_shape`` too); the scan then reads them at every step. When an
    ``nn.stochastic`` scope is active, each step gets its own key, so a body that drops
    out or samples does not repeat one mask at every step.

    Args:
      body_fn: ``(carry, x) -> (carry, y)``; ``x`` is one slice of every array in ``xs``.
      init: the first carry (any pytree).
      xs: a pytree of arrays, all with the same sizes along ``axis``.
      axis: the scanned axis, or several (scanned as nested loops, the first outermost).
      keepdims: if True, slices keep the scanned axes with size 1 (``y`` must too).

    Returns:
      ``(final_carry, ys)``: each ``y`` stacked with the scanned axes at ``axis``.

    Raises:
      ScanAxisError: an axis that ``xs`` does not have, or mismatched sizes along it.
    """
    # Imported here, not at the top: flaxen.nn.attention imports this module.
    from flaxen.nn import _context

    # The module, not flaxen.nn.stochastic (which flaxen.nn rebinds to the function).
    _stoch = importlib.import_module("flaxen.nn.stochastic")

    where = _context.current_path()
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise ScanAxisError(f'In "{where}": scan_in_dim: expected xs with at least one '
                            "array to scan over, got an empty pytree.")
    leaves = [jnp.asarray(x) for x in leaves]
    axes = _scan_axes(axis, leaves[0].ndim, where, f"xs of shape {leaves[0].shape}")
    sizes = tuple(leaves[0].shape[a] for a in axes)
    for x in leaves[1:]:
        ax = _scan_axes(axis, x.ndim, where, f"an xs array of shape {x.shape}")
        if tuple(x.shape[a] for a in ax) != sizes:
            raise ScanAxisError(
                f'In "{where}": scan_in_dim: expected every xs array to have sizes {sizes} '
                f"along axis={axis!r} (as the first, shape {leaves[0].shape}), got an array "
                f"of shape {x.shape}.")
    n = len(axes)
    xs = jax.tree.map(lambda x: _to_front(jnp.asarray(x), _scan_axes(axis, jnp.ndim(x), where,
                                                                         "xs")), xs)

    keys = None
    if _stoch.is_stochastic() and _context.current_frame() is not None:
        try:
            base = _stoch.make_rng()
        except FlaxenError:
            base = None  # a scope that cannot serve here; a key drawn in the body says so
        if base is not None:
            flat = jax.random.split(base, int(np.prod(sizes)))
            keys = flat.reshape(sizes + flat.shape[1:])

    def step(carry: Any, x_and_key: Any) -> tuple[Any, Any]:
        x, key = x_and_key
        if keepdims:
            x = jax.tree.map(lambda a: _from_front(a.reshape((1,) * n + a.shape),
                                                   _out_axes(a.ndim + n)), x)
        with (_stoch.stochastic(key) if key is not None else contextlib.nullcontext()):
            carry, y = body_fn(carry, x)
        if keepdims:
            y = jax.tree.map(lambda a: _to_front(a, _out_axes(a.ndim))[(0,) * n], y)
        return carry, y

    def _out_axes(ndim: int) -> tuple[int, ...]:
        return _scan_axes(axis, ndim, where, "a scan output")

    def scan_leading(carry: Any, x_and_key: Any, depth: int) -> tuple[Any, Any]:
        if depth == 0:
            return step(carry, x_and_key)
        return lax.scan(lambda c, xk: scan_leading(c, xk, depth - 1), carry, x_and_key)

    frame = _context.current_frame()
    if frame is not None and frame.is_init:
        # Create the body's params once, in this trace, from the first slice; then give
        # the names back so the scanned body claims (and reads) the very same entries.
        saved = (frame.counter, dict(frame.claimed), set(frame.shared))
        first = jax.tree.map(lambda a: a[(0,) * n], (xs, keys))
        step(init, first)
        frame.counter, frame.claimed, frame.shared = saved
    carry, ys = scan_leading(init, (xs, keys), n)
    ys = jax.tree.map(lambda y: _from_front(y, _out_axes(y.ndim)), ys)
    return carry, ys
