"""The optimizer core: ``OptimizerDef`` (the protocol every optimizer follows), the
``Optimizer`` pytree, and the two combinators the core itself builds (``MultiOptimizer``
for ``create(focus=...)``, ``ReplicatedOptimizer`` for ``replicate(devices=...)``).

An ``OptimizerDef`` such as ``optim.Momentum(learning_rate=0.1, beta=0.9)`` is a thin,
documented mapping of its hyper-parameters onto an optax ``GradientTransformation``; the
update rules themselves are optax's. ``opt_def.create(target)`` returns an ``Optimizer``
holding the ``target`` (usually an ``nn.Model``) and its ``state`` (the step count and the
optax state); it passes through ``jax.jit`` at the cost of its arrays (see ``Optimizer``).

Hyper-parameters given per step (``optimizer.apply_gradient(grads, learning_rate=lr)``)
enter the optax transformation as values (traced under ``jit``), so a schedule does not
recompile. Those that switch a part of the update on or off (``nesterov``, a weight decay
created as 0) are fixed at construction.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flaxen import optim
    >>> opt = optim.Momentum(learning_rate=0.1, beta=0.9).create({"w": jnp.ones(3)})
    >>> opt, loss = opt.optimize(lambda p: jnp.sum(p["w"] ** 2))
    >>> int(opt.state.step)
    1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import optax

from flaxen import errors, jax_utils, parallel, serialization, struct
from flaxen.nn.base import Model
from flaxen.optim import checks
from flaxen.optim.pytree import register_flat_node
from flaxen.traverse_util import ModelParamTraversal, param_paths, path_to_str, set_leaves


@struct.dataclass
class OptimizerState:
    """The step count (an int32 scalar, 0 before the first update) and the optax state.

    ``param_states`` keeps the pre-release name; it holds what the definition's
    ``init_state`` made for the target's params (the optax state; for ``MultiOptimizer``,
    a tuple of sub-``OptimizerState``s).
    """

    step: jax.Array
    param_states: Any


def _zero_step() -> jax.Array:
    return jnp.zeros((), jnp.int32)


class OptimizerDef:
    """An optimization algorithm with its default hyper-parameters.

    The protocol every optimizer follows, simple or combinator:

    * ``__init__`` ends in ``OptimizerDef.__init__(self, hyper_params, parts)``:
      ``hyper_params`` is the defaults (a frozen dataclass, or for ``MultiOptimizer`` a
      tuple of its sub-optimizers' ones); ``parts`` is a tuple of the other hashable things
      that define the algorithm (sub-optimizers, traversals, axis names). Hash and equality
      are ``(type, hyper_params, parts)``, computed once: ``jit`` compares the definition on
      every call.
    * ``update_hyper_params(**overrides)`` returns the hyper-parameters for one step, of
      the same type as ``self.hyper_params`` (a combinator routes overrides to its parts).
    * ``init_state(params) -> OptimizerState`` and
      ``apply_gradient(hyper_params, params, state, grads) -> (new_params, new_state)``,
      where ``params`` is the target's params tree (a Model's params dict), ``state`` an
      ``OptimizerState`` whose ``step`` counts this definition's updates.

    A simple optimizer only implements ``transform(hyper_params)`` (the optax
    transformation; values may be traced, its structure must depend only on
    ``self.hyper_params``), or the pre-release per-leaf pair ``init_param_state`` /
    ``apply_param_gradient``; the base class does the rest.

    Attributes:
        hyper_params: the defaults (``.learning_rate`` etc.).
    """

    #: Hyper-parameters that may not be given per step (they change the update's structure).
    _static_names: tuple[str, ...] = ()
    #: Hyper-parameters whose constructor value 0 or None switches a part of the update off
    #: (e.g. weight decay); they may vary per step only when switched on at construction.
    _switch_names: tuple[str, ...] = ()
    #: Hyper-parameters that must be >= 0 when given as concrete numbers.
    _nonnegative_names: tuple[str, ...] = ("learning_rate",)
    #: Whether a learning rate must be set (at construction or per step).
    _needs_learning_rate: bool = True

    def __init__(self, hyper_params: Any, parts: tuple[Any, ...] = ()):
        name = type(self).__name__
        if dataclasses.is_dataclass(hyper_params):
            fixed = {f.name: checks.as_static(name, f.name, getattr(hyper_params, f.name))
                     for f in dataclasses.fields(hyper_params)}
            hyper_params = dataclasses.replace(cast(Any, hyper_params), **fixed)
            self._check(hyper_params, fixed.keys())
        self.hyper_params = hyper_params
        self._key = (type(self), hyper_params, parts)
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (isinstance(other, OptimizerDef) and self._hash == other._hash
                and self._key == other._key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hyper_params})"

    # -- to implement ---------------------------------------------------------------------

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        """The optax transformation for these (possibly traced) hyper-parameter values."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `transform(hyper_params)` (an optax "
            "transformation) or the pre-release per-leaf pair `init_param_state(param)` / "
            "`apply_param_gradient(step, hyper_params, param, state, grad)`.")

    # The pre-release per-leaf API: a subclass may define these two instead of `transform`.
    def init_param_state(self, param: Any) -> Any:
        """Per-leaf state (pre-release API; used only if ``transform`` is not defined)."""
        raise NotImplementedError

    def apply_param_gradient(self, step: jax.Array, hyper_params: Any, param: Any,
                             state: Any, grad: Any) -> tuple[Any, Any]:
        """``(new_param, new_state)`` for one leaf (pre-release API)."""
        raise NotImplementedError

    def _per_leaf(self) -> bool:
        cls = type(self)
        return (cls.transform is OptimizerDef.transform
                and cls.apply_param_gradient is not OptimizerDef.apply_param_gradient)

    # -- hyper-parameters -----------------------------------------------------------------

    def _check(self, hp: Any, names: Any) -> None:
        opt = type(self).__name__
        for name in names:
            value = getattr(hp, name)
            if isinstance(value, str | bytes):
                raise errors.HyperParamError(
                    opt, name, f"must be a number, got the string {value!r}",
                    f"For example `{name}=0.9`.")
            if name in self._nonnegative_names:
                checks.check_nonnegative(opt, name, value)

    def update_hyper_params(self, **overrides: Any) -> Any:
        """The default hyper-parameters with ``overrides`` applied (for one step).

        ``hyper_params=`` replaces all of them; other keyword arguments replace fields.
        Returns an object of the type of ``self.hyper_params``.

        Raises:
            HyperParamError: an unknown name, a negative learning rate, an override of a
                hyper-parameter fixed at construction, or no learning rate at all.
        """
        hp = overrides.pop("hyper_params", self.hyper_params)
        if overrides:
            names = [f.name for f in dataclasses.fields(hp)]
            for name, value in overrides.items():
                checks.check_override(self, name, value, names)
            hp = dataclasses.replace(hp, **overrides)
            self._check(hp, overrides.keys())
        if self._needs_learning_rate and getattr(hp, "learning_rate", 0.0) is None:
            opt = type(self).__name__
            raise errors.HyperParamError(
                opt, "learning_rate", "was not provided",
                f"Pass it to the constructor, `{opt}(learning_rate=0.1)`, or per step, "
                "`optimizer.apply_gradient(grads, learning_rate=lr)`.")
        return hp

    def _init_hyper_params(self) -> Any:
        hp = self.hyper_params
        if getattr(hp, "learning_rate", 0.0) is None:  # the state never depends on it
            hp = dataclasses.replace(hp, learning_rate=1.0)
        return hp

    # -- state and updates ----------------------------------------------------------------

    def init_state(self, params: Any) -> OptimizerState:
        """``OptimizerState(step=0, param_states=optax_init(params))``.

        Raises:
            ParamDtypeError: a parameter is not floating (integer params would be
                rounded by every update).
        """
        checks.check_inexact(type(self).__name__, params)
        if self._per_leaf():
            return OptimizerState(_zero_step(), jax.tree.map(self.init_param_state, params))
        tx = self.transform(self._init_hyper_params())
        with jax.numpy_dtype_promotion("standard"):
            return OptimizerState(_zero_step(), tx.init(params))

    def apply_gradient(self, hyper_params: Any, params: Any, state: OptimizerState,
                       grads: Any) -> tuple[Any, OptimizerState]:
        """One update: ``(new_params, new_state)``; ``grads`` mirrors ``params``."""
        if self._per_leaf():
            leaves, treedef = jax.tree.flatten(params)
            states = treedef.flatten_up_to(state.param_states)  # type: ignore[attr-defined]
            out = [self.apply_param_gradient(state.step, hyper_params, p, st, g)
                   for p, st, g in zip(leaves, states, treedef.flatten_up_to(grads))]  # type: ignore[attr-defined]
            new_params = jax.tree.unflatten(treedef, [p for p, _ in out])
            new_states = jax.tree.unflatten(treedef, [st for _, st in out])
            return new_params, OptimizerState(state.step + 1, new_states)
        tx = self.transform(hyper_params)
        # optax relies on standard promotion (e.g. ``b1 ** count`` with an int32 count);
        # a user's strict mode must not break it. ``apply_updates`` casts back to each
        # param's dtype, so bf16 params stay bf16 even with an f32 learning rate.
        with jax.numpy_dtype_promotion("standard"):
            updates, new_inner = tx.update(grads, state.param_states, params)
            new_params = optax.apply_updates(params, updates)
        return new_params, OptimizerState(state.step + 1, new_inner)

    def create(self, target: Any, focus: Any = None) -> Optimizer:
        """An ``Optimizer`` for ``target`` (an ``nn.Model``, a dict of arrays, any pytree).

        Args:
            target: the parameters to optimize.
            focus: optional traversal (e.g. ``ModelParamTraversal``); only the parameters it
                selects are updated, the others stay bit-for-bit unchanged.
        """
        opt_def = self if focus is None else MultiOptimizer((focus, self))
        return Optimizer(opt_def, opt_def.init_state(_params_of(target)), target)


def _params_of(target: Any) -> Any:
    """What the optax transformation sees: a Model's params dict, else the target itself.

    Keeping Models out of the optax state makes it a plain tree of dicts (what optax masks
    and checkpoints expect).
    """
    return target.params if isinstance(target, Model) else target


def _grad_params(target: Any, grads: Any) -> Any:
    """Gradients of a Model target: a Model (from ``jax.grad``) or its params dict."""
    if isinstance(target, Model) and isinstance(grads, Model):
        return grads.params
    return grads


@register_flat_node
@dataclasses.dataclass(frozen=True, init=False)
class Optimizer:
    """A target (params) with its optimizer state; a pytree, so it passes through ``jit``.

    The pytree is flat: its children are the leaves of ``(state, target)`` and its static
    data the definition with the structure of both, so ``jit`` does one Python call to
    flatten or rebuild it, and ``state``/``target`` are rebuilt only when read (see
    ``flaxen/optim/pytree.py``).

    Attributes:
        optimizer_def: the algorithm and default hyper-parameters (static).
        state: ``OptimizerState`` (``step``: int32 scalar, ``param_states``: optax state).
        target: the parameters, usually an ``nn.Model``.
    """

    # pytree_node=False: serialization leaves the definition out of state dicts.
    optimizer_def: OptimizerDef = dataclasses.field(metadata={"pytree_node": False})
    state: OptimizerState
    target: Any

    def __init__(self, optimizer_def: OptimizerDef, state: OptimizerState, target: Any):
        d = self.__dict__  # frozen: write the fields directly
        d["optimizer_def"] = optimizer_def
        d["state"] = state
        d["target"] = target

    def replace(self, **updates: Any) -> Optimizer:
        """A copy with the given fields replaced (``struct.dataclass`` style)."""
        return dataclasses.replace(self, **updates)

    def apply_gradient(self, grads: Any, **hyper_param_overrides: Any) -> Optimizer:
        """A new optimizer after one update with ``grads`` (same structure as ``target``).

        Args:
            grads: gradients mirroring ``target`` (``jax.grad(loss)(optimizer.target)``).
            **hyper_param_overrides: values for this step only, e.g. ``learning_rate=lr``
                (a Python number or a traced array: no recompilation per value).

        Raises:
            GradientStructureError: ``grads`` differs from ``target`` (names the path).
            HyperParamError: bad hyper-parameter name or value.
        """
        target = self.target
        params = _params_of(target)
        grads = _grad_params(target, grads)
        checks.check_gradient_structure(params, grads)
        opt_def = self.optimizer_def
        hp = opt_def.update_hyper_params(**hyper_param_overrides)
        new_params, new_state = opt_def.apply_gradient(hp, params, self.state, grads)
        if params is not target:
            new_params = dataclasses.replace(target, params=new_params)
        return Optimizer(opt_def, new_state, new_params)

    def compute_gradient(self, loss_fn: Any) -> tuple[Any, ...]:
        """Loss and gradient of ``loss_fn(target)``, as the pre-release returned them.

        Returns:
            ``(loss, aux, grad)`` when ``loss_fn`` returns ``(loss, aux)``, and
            ``(loss, grad)`` when it returns a bare loss (an array or a number). ``grad``
            mirrors ``target`` (a Model for a Model target).
        """
        bare = False

        def wrapped(target: Any) -> tuple[jax.Array, Any]:
            nonlocal bare
            out = loss_fn(target)
            if isinstance(out, tuple) and len(out) == 2:
                loss, aux = out
            elif isinstance(out, tuple | list):
                raise errors.FlaxenError(
                    f"loss_fn must return a scalar loss or `(loss, aux)`, got a "
                    f"{type(out).__name__} of length {len(out)}. Pack the extra outputs "
                    "into aux, e.g. `return loss, (a, b)`.")
            else:
                bare, loss, aux = True, out, None
            if jnp.shape(loss) != ():
                raise errors.FlaxenError(
                    f"loss_fn must return a scalar loss (or `(loss, aux)`), got a loss of "
                    f"shape {jnp.shape(loss)}. Reduce it, e.g. with `jnp.mean(...)`.")
            return loss, aux

        (loss, aux), grad = jax.value_and_grad(wrapped, has_aux=True)(self.target)
        return (loss, grad) if bare else (loss, aux, grad)

    compute_gradients = compute_gradient

    def optimize(self, loss_fn: Any, **hyper_param_overrides: Any) -> tuple[Any, ...]:
        """One training step, as the pre-release returned it.

        Args:
            loss_fn: ``loss_fn(target) -> (loss, aux)``, or a bare scalar loss.
            **hyper_param_overrides: per-step values, as in ``apply_gradient``.

        Returns:
            ``(new_optimizer, loss, aux)``, or ``(new_optimizer, loss)`` when ``loss_fn``
            returns a bare loss.
        """
        out = self.compute_gradient(loss_fn)
        new = self.apply_gradient(out[-1], **hyper_param_overrides)
        return (new,) + tuple(out[:-1])

    def state_dict(self) -> dict[str, Any]:
        """``{'target': ..., 'state': {'step': ..., 'param_states': ...}}`` (nested dicts)."""
        return serialization.to_state_dict(self)

    def restore_state(self, state: dict[str, Any]) -> Optimizer:
        """A copy of this optimizer (used as the template) holding the values of ``state``."""
        return serialization.from_state_dict(self, state)

    def replicate(self, mesh: Any = None, *, devices: Any = None,
                  axis_name: str | None = None) -> Optimizer:
        """This optimizer on every device, for one of the two data-parallel paths.

        * ``replicate()`` / ``replicate(mesh)``: the flaxen path (``jax.jit`` over a
          ``Mesh``): every array replicated with ``NamedSharding(mesh, P())``; ``mesh``
          defaults to ``flaxen.parallel.default_mesh()``.
        * ``replicate(devices=...)`` and/or ``replicate(axis_name='batch')`` (or a list of
          devices as the first argument): the pre-release pmap form. One copy per device
          stacked on a leading axis (``jax_utils.replicate``), and ``apply_gradient``
          averages the gradients over ``axis_name`` itself, so it must run inside
          ``jax.pmap(..., axis_name=axis_name)``. ``devices`` defaults to
          ``jax.local_devices()``.

        See ``docs/parallelism.md``.

        Raises:
            ReplicationError: the optimizer is already replicated for pmap.
        """
        if isinstance(mesh, list | tuple):  # the pre-release positional `devices`
            mesh, devices = None, mesh
        if isinstance(self.optimizer_def, ReplicatedOptimizer) or any(
                jax_utils.is_stacked(x) for x in jax.tree.leaves(self)):
            raise errors.ReplicationError(
                "Optimizer.replicate: expected an optimizer with one copy, got one that is "
                "already replicated for pmap (a leading device axis). Replicate once, or "
                "call `optimizer.unreplicate()` first.")
        if devices is None and axis_name is None:
            return parallel.replicate(self, mesh)
        if mesh is not None:
            raise errors.ReplicationError(
                "Optimizer.replicate: expected either a Mesh (jit path) or `devices=`/"
                "`axis_name=` (pmap path), got both. Pass one of them.")
        wrapped = ReplicatedOptimizer(self.optimizer_def, devices, axis_name or "batch")
        return jax_utils.replicate(Optimizer(wrapped, self.state, self.target), devices)

    def unreplicate(self) -> Optimizer:
        """One copy of a replicated optimizer, on a single device.

        Works for all three replicated forms: ``replicate(devices=...)`` (the wrapping
        ``ReplicatedOptimizer`` is removed), ``jax_utils.replicate(optimizer)`` and
        pmap outputs (device 0's copy, ``x[0]``), and ``replicate(mesh)`` (the first
        local copy). An optimizer that is not replicated comes back unchanged.
        """
        opt_def = self.optimizer_def
        if isinstance(opt_def, ReplicatedOptimizer) or any(
                jax_utils.is_stacked(x) for x in jax.tree.leaves(self)):
            one = jax_utils.unreplicate(self)
            if isinstance(opt_def, ReplicatedOptimizer):
                one = Optimizer(opt_def.optimizer_def, one.state, one.target)
            return one
        return parallel.unreplicate(self)

    def shard(self, mesh: Any, rules: Any) -> Optimizer:
        """This optimizer laid out over ``mesh`` by sharding ``rules`` (params and state).

        See ``flaxen.sharding`` (the rules) and ``flaxen.optim.sharded``, and
        ``docs/large_models.md``.
        """
        from flaxen.optim.sharded import shard_optimizer

        return shard_optimizer(self, mesh, rules)


class MultiOptimizer(OptimizerDef):
    """One optimizer per traversal; parameters selected by none are frozen.

    Args:
        *traversals_and_optimizers: ``(traversal, optimizer_def)`` pairs; a traversal is a
            ``ModelParamTraversal`` (or anything with its ``select(tree) -> {path: leaf}``).

    Each sub-optimizer runs on the dict ``{path: leaf}`` its traversal selects, with its own
    state and step counter (``optimizer.state.param_states[i].step``). Per-step overrides
    (``apply_gradient(grads, learning_rate=lr)``) go to every sub-optimizer that has that
    hyper-parameter; ``hyper_params=(...)`` replaces all (one entry per sub-optimizer).
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
        super().__init__(tuple(o.hyper_params for o in self.sub_optimizers),
                         (self.traversals, self.sub_optimizers))

    def update_hyper_params(self, **overrides: Any) -> tuple[Any, ...]:
        hps = tuple(overrides.pop("hyper_params", self.hyper_params))
        if len(hps) != len(self.sub_optimizers):
            raise errors.HyperParamError(
                "MultiOptimizer", "hyper_params", f"needs {len(self.sub_optimizers)} "
                f"entries (one per sub-optimizer), got {len(hps)}")
        known: set[str] = set()
        out = []
        for opt, hp in zip(self.sub_optimizers, hps):
            own = set(getattr(hp, "__dataclass_fields__", {}))
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
                        "MultiOptimizer", "traversals", f"select the parameter "
                        f"\"{path_to_str(p)}\" twice (traversals {seen[p]} and {i})",
                        "Make the filters disjoint, so each parameter has one optimizer.")
                seen[p] = i
        return sels

    def init_state(self, params: Any) -> OptimizerState:
        subs = tuple(o.init_state(sel) for o, sel in
                     zip(self.sub_optimizers, self._selections(params)))
        return OptimizerState(_zero_step(), subs)

    def apply_gradient(self, hyper_params: Any, params: Any, state: OptimizerState,
                       grads: Any) -> tuple[Any, OptimizerState]:
        new_leaves: dict[str, Any] = {}
        new_states = []
        g_leaves = dict(param_paths(grads))
        for opt, hp, sel, sub_state in zip(self.sub_optimizers, hyper_params,
                                           self._selections(params), state.param_states):
            sub_grads = {p: g_leaves[p] for p in sel}
            new_sel, new_sub = opt.apply_gradient(hp, sel, sub_state, sub_grads)
            new_leaves.update(new_sel)
            new_states.append(new_sub)
        return set_leaves(params, new_leaves), OptimizerState(state.step + 1, tuple(new_states))


class ReplicatedOptimizer(OptimizerDef):
    """``optimizer.replicate(devices=...)``: the January-2020 wrapper for ``jax.pmap``.

    Gradients are averaged over ``axis_name`` (inside pmap) before the wrapped definition
    applies them. Deprecated in the pre-release in favour of ``jax_utils.replicate(
    optimizer)`` plus an explicit ``lax.pmean(grads, 'batch')``; flaxen teaches Mesh
    replication (``optimizer.replicate()``, see ``docs/parallelism.md``).
    """

    def __init__(self, optimizer_def: OptimizerDef,
                 devices: Sequence[jax.Device] | None = None, axis_name: str = "batch"):
        self.optimizer_def = optimizer_def
        self.devices = None if devices is None else tuple(devices)
        self.axis_name = axis_name
        super().__init__(optimizer_def.hyper_params, (optimizer_def, self.devices, axis_name))

    def __repr__(self) -> str:
        return f"ReplicatedOptimizer({self.optimizer_def!r}, axis_name={self.axis_name!r})"

    def update_hyper_params(self, **overrides: Any) -> Any:
        return self.optimizer_def.update_hyper_params(**overrides)

    def init_state(self, params: Any) -> OptimizerState:
        return self.optimizer_def.init_state(params)

    def apply_gradient(self, hyper_params: Any, params: Any, state: OptimizerState,
                       grads: Any) -> tuple[Any, OptimizerState]:
        try:
            grads = jax.lax.pmean(grads, self.axis_name)
        except NameError as e:
            raise errors.ReplicationError(
                f"This optimizer was replicated for pmap (`optimizer.replicate(devices=..., "
                f"axis_name={self.axis_name!r})`), so apply_gradient averages gradients over "
                f"the mapped axis {self.axis_name!r}; expected to run inside "
                f"`jax.pmap(..., axis_name={self.axis_name!r})`, got no such axis. Call it "
                "inside that pmap, or use `optimizer.unreplicate()` to get a plain one.") from e
        return self.optimizer_def.apply_gradient(hyper_params, params, state, grads)
