"""Sharding rules: how each parameter is laid out over a ``jax.sharding.Mesh``, by its path.

A rule set is an ordered list of ``(pattern, spec)`` pairs. Each parameter's path, spelled by
``traverse_util.path_to_str`` relative to the params dict (``block_0/attention/query/kernel``),
is matched with ``re.search`` against the patterns in order; the first match decides. A
parameter no rule matches is replicated (``PartitionSpec()``).

A spec is either a ``PartitionSpec`` (JAX's meaning: entry *i* is dimension *i*, missing
trailing entries are replicated) or a callable ``spec(shape, mesh) -> PartitionSpec``:
``Trailing(...)`` aligns the entries on the *last* dimensions (so one rule fits a layer's
kernel and the same kernel stacked over layers, ``[num_layers, ...]``), ``LargestDim(axis)``
splits the largest dimension divisible by the axis size.

Two rule sets ship: ``fully_sharded()`` (every parameter split over the data axis: FSDP /
ZeRO-3) and ``tensor_parallel()`` (attention heads and MLP hidden units of a Transformer over
a ``model`` axis, Megatron style). Nothing here runs a collective itself: placing arrays with
``NamedSharding`` and calling ``jax.jit`` lets XLA's SPMD partitioner insert them.

Example:
    >>> import jax.numpy as jnp
    >>> from flaxen import sharding
    >>> mesh = sharding.make_mesh(data=8)
    >>> params = {"Dense_0": {"kernel": jnp.ones((16, 4)), "bias": jnp.ones(4)}}
    >>> specs = sharding.param_specs(params, mesh, sharding.fully_sharded())
    >>> specs["Dense_0"]
    {'bias': P(), 'kernel': P('batch', None)}
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxen import traverse_util
from flaxen.errors import ShardingRuleError
from flaxen.parallel import BATCH_AXIS

MODEL_AXIS = "model"

SpecFn = Callable[[tuple[int, ...], Mesh], P]
Spec = P | SpecFn
Rules = Sequence[tuple[str, Spec]]


@dataclasses.dataclass(frozen=True)
class Trailing:
    """A spec aligned on the last dimensions: ``Trailing('model', None)`` on a parameter of
    shape ``[a, b, c]`` is ``P(None, 'model', None)``, on ``[n, a, b, c]`` it is
    ``P(None, None, 'model', None)``.

    Attributes:
        entries: one mesh axis name (or ``None``, or a tuple of names) per trailing dim.
    """

    entries: tuple[Any, ...]

    def __init__(self, *entries: Any):
        object.__setattr__(self, "entries", tuple(entries))

    def __call__(self, shape: tuple[int, ...], mesh: Mesh) -> P:
        pad = len(shape) - len(self.entries)
        return P(*([None] * max(pad, 0)), *self.entries)  # a too-long spec is reported

    def __repr__(self) -> str:
        return f"Trailing({', '.join(map(repr, self.entries))})"


@dataclasses.dataclass(frozen=True)
class LargestDim:
    """Splits the largest dimension that the size of mesh axis ``axis`` divides (the first
    of equal ones); replicates a parameter with no such dimension (scalars, small biases).

    Attributes:
        axis: the mesh axis name.
        min_size: parameters with fewer elements stay replicated (splitting them saves
            less memory than the collectives cost).
    """

    axis: str = BATCH_AXIS
    min_size: int = 0

    def __call__(self, shape: tuple[int, ...], mesh: Mesh) -> P:
        n = _axis_size(mesh, self.axis) if self.axis in mesh.shape else 0
        if n == 0 or math.prod(shape) < self.min_size:
            return P() if n else P(self.axis)  # an unknown axis is reported by the check
        dims = [d for d in sorted(range(len(shape)), key=lambda d: -shape[d])
                if shape[d] % n == 0]
        if not dims:
            return P()
        entries: list[Any] = [None] * len(shape)
        entries[dims[0]] = self.axis
        return P(*entries)


def fully_sharded(axis: str = BATCH_AXIS, min_size: int = 0) -> list[tuple[str, Spec]]:
    """Fully sharded data parallelism: every parameter split over the data axis.

    Each parameter is split on its largest dimension divisible by the axis size (one rule,
    ``('.*', LargestDim(axis))``), and so is its optimizer state; batches are split over the
    same axis. XLA gathers each parameter before it is used and reduce-scatters its
    gradient, so each device holds about ``1 / mesh.shape[axis]`` of parameters and state.
    """
    return [(".*", LargestDim(axis, min_size))]


def tensor_parallel(axis: str = MODEL_AXIS, attention: str = "attention",
                    mlp: str = "mlp") -> list[tuple[str, Spec]]:
    """Tensor (Megatron) parallelism for Transformer attention and MLP blocks.

    Attention ``query``/``key``/``value`` kernels ``[features, heads, head_dim]`` and biases
    ``[heads, head_dim]`` are split on the heads, the ``out`` kernel ``[heads, head_dim,
    features]`` too; the MLP's first ``Dense_0`` (kernel ``[features, hidden]``, bias
    ``[hidden]``) on its hidden units and the second ``Dense_1`` (``[hidden, features]``)
    on its input. Each block then needs one all-reduce forward (after ``out`` and after
    ``Dense_1``) and one backward. Everything else (embeddings, LayerNorms) is replicated.
    Specs align on the last dimensions, so they fit layers stacked by ``nn.scan`` too.

    Args:
        axis: the mesh axis that carries the model dimension.
        attention: the name of the attention module in each block (a regex).
        mlp: the name of the MLP module in each block (a regex); its two layers are
            ``Dense_0`` and ``Dense_1``.
    """
    return [
        (rf"(^|/){attention}/(query|key|value)/(kernel|bias)$", Trailing(axis, None)),
        (rf"(^|/){attention}/out/kernel$", Trailing(axis, None, None)),
        (rf"(^|/){mlp}/Dense_0/kernel$", Trailing(axis)),
        (rf"(^|/){mlp}/Dense_0/bias$", Trailing(axis)),
        (rf"(^|/){mlp}/Dense_1/kernel$", Trailing(axis, None)),
    ]


def make_mesh(data: int | None = None, model: int = 1, devices: Any = None) -> Mesh:
    """A ``(data, model)`` mesh with axes ``('batch', 'model')``.

    Args:
        data: devices along the data (batch) axis; default: all devices / ``model``.
        model: devices along the model axis.
        devices: the devices to use (default ``jax.devices()``, the first
            ``data * model`` of them).

    Raises:
        ShardingRuleError: more devices asked for than there are.
    """
    devices = list(jax.devices() if devices is None else devices)
    data = len(devices) // model if data is None else data
    if data < 1 or model < 1 or data * model > len(devices):
        raise ShardingRuleError("<mesh>", (data, model), "make_mesh",
                                f"a {data} x {model} mesh needs {data * model} devices, "
                                f"there are {len(devices)}",
                                "Choose data * model <= the number of devices.")
    grid = np.array(devices[:data * model]).reshape(data, model)
    return Mesh(grid, (BATCH_AXIS, MODEL_AXIS))


def _axis_size(mesh: Mesh, entry: Any) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def _rule_text(pattern: str, spec: Any) -> str:
    return f"({pattern!r}, {spec!r})"


def check_spec(path: str, shape: tuple[int, ...], spec: P, mesh: Mesh,
               rule: str = "the given spec") -> P:
    """``spec`` if it can lay out an array of ``shape`` over ``mesh``, else a clear error.

    Raises:
        ShardingRuleError: the spec is longer than the rank, names an axis the mesh lacks,
            uses an axis twice, or a dimension is not divisible by its axes' size.
    """
    shape = tuple(shape)
    if len(spec) > len(shape):
        raise ShardingRuleError(
            path, shape, rule, f"the spec {spec} has {len(spec)} entries but the parameter "
            f"has rank {len(shape)}", "Give at most one entry per dimension (a `Trailing(...)` "
            "spec aligns on the last ones), or make the pattern skip this parameter.")
    seen: set[str] = set()
    for dim, entry in enumerate(spec):
        if entry is None:
            continue
        for name in entry if isinstance(entry, tuple) else (entry,):
            if name not in mesh.shape:
                raise ShardingRuleError(
                    path, shape, rule, f"the mesh has no axis {name!r} (its axes: "
                    f"{dict(mesh.shape)})", "Use one of the mesh's axis names, or build the "
                    "mesh with that axis, e.g. `sharding.make_mesh(data, model)`.")
            if name in seen:
                raise ShardingRuleError(path, shape, rule, f"the axis {name!r} is used twice",
                                        "Split each dimension over different axes.")
            seen.add(name)
        n = _axis_size(mesh, entry)
        if shape[dim] % n:
            raise ShardingRuleError(
                path, shape, rule, f"dimension {dim} (size {shape[dim]}) is not divisible by "
                f"the {n} devices of mesh axis {entry!r}", f"Choose sizes that are multiples "
                f"of {n}, a mesh with fewer devices on {entry!r}, or a rule that leaves this "
                "dimension unsplit (None).")
    return spec


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    """The ``PartitionSpec`` of the parameter at ``path`` (first matching rule; else ``P()``).

    Raises:
        ShardingRuleError: the matching rule does not fit (see ``check_spec``), or a rule is
            not a ``(pattern, spec)`` pair.
    """
    shape = tuple(int(d) for d in shape)
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ShardingRuleError(path, shape, f"number {i} ({rule!r})",
                                    "a rule must be a (pattern, spec) pair",
                                    "For example `('attention/query/kernel', P(None, 'model'))`.")
        pattern, spec = rule
        if re.search(pattern, path):
            resolved = spec(shape, mesh) if callable(spec) else spec
            if not isinstance(resolved, P):
                raise ShardingRuleError(path, shape, _rule_text(pattern, spec),
                                        f"the spec is a {type(resolved).__name__}",
                                        "Give a PartitionSpec or a callable returning one.")
            return check_spec(path, shape, resolved, mesh, _rule_text(pattern, spec))
    return P()


def param_specs(params: Any, mesh: Mesh, rules: Rules) -> Any:
    """A tree like ``params`` with the ``PartitionSpec`` of each leaf (arrays or
    ``jax.ShapeDtypeStruct``s; paths are relative to ``params``)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: spec_for(traverse_util.path_to_str(p), np.shape(x), mesh, rules), params)


def param_shardings(params: Any, mesh: Mesh, rules: Rules) -> Any:
    """A tree like ``params`` with the ``NamedSharding`` of each leaf."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh, rules),
                        is_leaf=lambda s: isinstance(s, P))


def shard_params(params: Any, mesh: Mesh, rules: Rules) -> Any:
    """``params`` placed on ``mesh`` as ``rules`` say (``jax.device_put``)."""
    return jax.device_put(params, param_shardings(params, mesh, rules))


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes each device holds of the arrays in ``tree`` (from their addressable shards)."""
    out: dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            for shard in x.addressable_shards:
                out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def total_bytes(tree: Any) -> int:
    """Bytes of one full copy of the arrays in ``tree``."""
    return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))
