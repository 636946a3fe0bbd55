"""Different optimizers for different parameters, selected by path; unselected ones frozen.

Example:
    >>> from flaxen import optim
    >>> kernels = optim.ModelParamTraversal(lambda path, _: "kernel" in path)
    >>> biases = optim.ModelParamTraversal(lambda path, _: "bias" in path)
    >>> opt_def = optim.MultiOptimizer((kernels, optim.Momentum(learning_rate=0.01)),
    ...                                (biases, optim.Adam(learning_rate=0.1)))
    >>> optimizer = opt_def.create(model)  # doctest: +SKIP

Each sub-optimizer runs on a dict ``{path: leaf}`` of the leaves its traversal selects, with
its own state and step counter (``optimizer.state.param_states[i].step``). Leaves selected
by no traversal are not touched at all, so they stay bit-for-bit unchanged. A leaf
selected by two traversals is an error (pre-release Flax silently applied both updates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from flaxen import errors
from flaxen.optim.base import OptimizerDef, OptimizerState


def _entry_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_paths(tree: Any) -> list[tuple[str, Any]]:
    """``[(path, leaf)]`` with slash paths; for an ``nn.Model`` relative to its params.

    Example: ``'/Dense_0/kernel'`` for ``model.params['Dense_0']['kernel']``.
    """
    is_model = hasattr(tree, "params") and hasattr(tree, "module")
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for keys, leaf in flat:
        names = [_entry_name(k) for k in keys]
        if is_model and names[:1] == ["params"]:
            names = names[1:]
        out.append(("/" + "/".join(names), leaf))
    return out


class ModelParamTraversal:
    """Selects the leaves of a Model (or any pytree) whose path passes ``filter_fn``.

    Args:
        filter_fn: ``filter_fn(path: str, value) -> bool``; ``path`` is ``'/'`` joined keys
            starting with a slash, e.g. ``'/Dense_0/kernel'`` (Model params) or
            ``'/encoder/w'`` (a dict).
    """

    def __init__(self, filter_fn: Callable[[str, Any], bool]):
        self.filter_fn = filter_fn

    def __hash__(self) -> int:
        return hash((ModelParamTraversal, self.filter_fn))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelParamTraversal) and self.filter_fn == other.filter_fn

    def select(self, tree: Any) -> dict[str, Any]:
        """``{path: leaf}`` of the selected leaves (sorted by path)."""
        return {p: v for p, v in sorted(leaf_paths(tree), key=lambda pv: pv[0])
                if self.filter_fn(p, v)}

    def iterate(self, tree: Any) -> Iterator[Any]:
        """The selected leaves, sorted by path."""
        yield from self.select(tree).values()

    def update(self, fn: Callable[[Any], Any], tree: Any) -> Any:
        """``tree`` with ``fn`` applied to the selected leaves."""
        chosen = self.select(tree)
        return set_leaves(tree, {p: fn(v) for p, v in chosen.items()})


def set_leaves(tree: Any, new: dict[str, Any]) -> Any:
    """``tree`` with the leaves at the given slash paths replaced (others untouched)."""
    treedef = jax.tree.structure(tree)
    leaves = [new.get(p, v) for p, v in leaf_paths(tree)]
    return jax.tree.unflatten(treedef, leaves)


class MultiOptimizer(OptimizerDef):
    """One optimizer per traversal; parameters selected by none are frozen.

    Args:
        *traversals_and_optimizers: ``(traversal, optimizer_def)`` pairs.

    Per-step overrides (``apply_gradient(grads, learning_rate=lr)``) go to every
    sub-optimizer that has that hyper-parameter; ``hyper_params=[...]`` replaces all.
    """

    def __init__(self, *traversals_and_optimizers: tuple[ModelParamTraversal, OptimizerDef]):
        for i, pair in enumerate(traversals_and_optimizers):
            if not (isinstance(pair, tuple) and len(pair) == 2
                    and isinstance(pair[1], OptimizerDef) and hasattr(pair[0], "select")):
                raise errors.HyperParamError(
                    "MultiOptimizer", f"argument {i}", f"must be a (traversal, "
                    f"OptimizerDef) pair, got {pair!r}",
                    "e.g. `MultiOptimizer((optim.ModelParamTraversal(fn), optim.Adam(1e-3)))`.")
        self.traversals = tuple(t for t, _ in traversals_and_optimizers)
        self.sub_optimizers = tuple(o for _, o in traversals_and_optimizers)
        self.hyper_params = tuple(o.hyper_params for o in self.sub_optimizers)
        self._hash = hash((MultiOptimizer, self.traversals, self.sub_optimizers))

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, MultiOptimizer)
                                 and self.traversals == other.traversals
                                 and self.sub_optimizers == other.sub_optimizers)

    def __hash__(self) -> int:
        return self._hash

    def update_hyper_params(self, **overrides: Any) -> Any:
        if "hyper_params" in overrides:
            hps = tuple(overrides.pop("hyper_params"))
            if len(hps) != len(self.sub_optimizers):
                raise errors.HyperParamError(
                    "MultiOptimizer", "hyper_params", f"needs {len(self.sub_optimizers)} "
                    f"entries (one per sub-optimizer), got {len(hps)}")
        else:
            hps = self.hyper_params
        known: set[str] = set()
        out = []
        for opt, hp in zip(self.sub_optimizers, hps):
            own = {f for f in getattr(hp, "__dataclass_fields__", {})}
            mine = {k: v for k, v in overrides.items() if k in own}
            known |= mine.keys()
            out.append(opt.update_hyper_params(hyper_params=hp, **mine))
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise errors.HyperParamError("MultiOptimizer", unknown[0],
                                         "is a hyper-parameter of none of its sub-optimizers")
        return tuple(out)

    def _selections(self, tree: Any) -> list[dict[str, Any]]:
        sels = [t.select(tree) for t in self.traversals]
        seen: dict[str, int] = {}
        for i, sel in enumerate(sels):
            for p in sel:
                if p in seen:
                    raise errors.HyperParamError(
                        "MultiOptimizer", "traversals", f"select the parameter \"{p}\" twice "
                        f"(traversals {seen[p]} and {i})",
                        "Make the filters disjoint, so each parameter has one optimizer.")
                seen[p] = i
        return sels

    def init_state(self, params: Any) -> OptimizerState:
        subs = tuple(o.init_state(sel) for o, sel in
                     zip(self.sub_optimizers, self._selections(params)))
        return OptimizerState(step=jnp.zeros((), jnp.int32), param_states=subs)

    def apply_gradient(self, hyper_params: Any, params: Any, state: OptimizerState,
                       grads: Any) -> tuple[Any, OptimizerState]:
        new_leaves: dict[str, Any] = {}
        new_states = []
        g_leaves = dict(leaf_paths(grads))
        for opt, hp, sel, sub_state in zip(self.sub_optimizers, hyper_params,
                                           self._selections(params), state.param_states):
            sub_grads = {p: g_leaves[p] for p in sel}
            new_sel, new_sub = opt.apply_gradient(hp, sel, sub_state, sub_grads)
            new_leaves.update(new_sel)
            new_states.append(new_sub)
        new_params = set_leaves(params, new_leaves)
        return new_params, OptimizerState(step=state.step + 1, param_states=tuple(new_states))
