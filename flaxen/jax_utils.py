"""Device placement helpers with the pre-release names, built on ``flaxen.parallel``.

``replicate`` / ``unreplicate`` place a pytree on every device of a mesh
(``NamedSharding(mesh, P())``) and bring one copy back; ``prefetch_to_device`` puts the
next batches on the devices, split along the batch axis, while the current step runs.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh

from flaxen.errors import FlaxenError, ScanAxisError


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
    return jnp.transpose(x, np.argsort(axes + tuple(rest)))


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
