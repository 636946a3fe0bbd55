"""The optimizer core: ``OptimizerDef`` (algorithm + default hyper-parameters), ``Optimizer``.

An ``OptimizerDef`` such as ``optim.Momentum(learning_rate=0.1, beta=0.9)`` is a thin,
documented mapping of its hyper-parameters onto an optax ``GradientTransformation``; the
update rules themselves are optax's. ``opt_def.create(target)`` returns an ``Optimizer``:
a pytree with the ``target`` (usually an ``nn.Model``) and its ``state`` (the step count
and the optax state) as children and the definition as static metadata, so it passes
through ``jax.jit`` at the cost of its arrays.

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
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxen import errors, struct
from flaxen.nn.base import Model


@struct.dataclass
class OptimizerState:
    """The step count (an int32 scalar, 0 before the first update) and the optax state.

    ``param_states`` keeps the pre-release name; it holds whatever the optax transformation's
    ``init`` returned for the target (for an ``nn.Model`` target: for its params dict; for
    ``MultiOptimizer``, a tuple of sub-``OptimizerState``s).
    """

    step: jax.Array
    param_states: Any


# jit rebuilds the returned Optimizer and OptimizerState on every call (pytree unflatten
# calls __init__). A frozen dataclass __init__ goes through object.__setattr__ per field;
# writing __dict__ directly builds the same object in about half the time.
def _state_init(self: Any, step: Any, param_states: Any) -> None:
    d = self.__dict__
    d["step"] = step
    d["param_states"] = param_states


OptimizerState.__init__ = _state_init  # type: ignore[method-assign]


def _is_concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _is_numeric(value: Any) -> bool:
    """A Python/NumPy number or a numeric array (traced or not): a per-step value."""
    if isinstance(value, bool | int | float | complex | np.number):
        return True
    if isinstance(value, np.ndarray | jax.Array):
        return np.dtype(value.dtype).kind in "biufc"
    return False


def _check_inexact(optimizer: str, params: Any) -> None:
    """Optimizers update floating (or complex) params only: an integer param would be
    rounded (to 0 for small steps) silently."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            dtype = np.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise errors.ParamDtypeError(optimizer, jax.tree_util.keystr(path) or "<root>",
                                         dtype)


def _same_static(value: Any, default: Any) -> bool:
    if not isinstance(value, bool | int | float | str | type(None)):
        return False
    return value == default and type(value) is type(default)


def _as_static(opt_name: str, name: str, value: Any) -> Any:
    """Constructor hyper-parameters must be hashable Python values (jit's cache key)."""
    if isinstance(value, bool | int | float | str | type(None)):
        return value
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        if not _is_concrete(value):
            raise errors.HyperParamError(
                opt_name, name, "was given a traced value to the constructor",
                f"Create the optimizer outside jit and pass per-step values to "
                f"`apply_gradient(grads, {name}=value)` instead.")
        if np.size(value) != 1:
            raise errors.HyperParamError(opt_name, name, f"must be a scalar, got shape "
                                         f"{np.shape(value)}")
        return np.asarray(value).item()
    return value


class OptimizerDef:
    """An optimization algorithm with its default hyper-parameters.

    Subclasses store a frozen ``struct.dataclass`` of hyper-parameters and implement
    ``transform(hyper_params)``, which builds the optax transformation. Hyper-parameter
    values may be traced; structure (which optax pieces are chained) must depend only on
    ``self.hyper_params`` so that the state layout never changes between steps.

    Attributes:
        hyper_params: the defaults, a frozen dataclass (``.learning_rate`` etc.).
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

    def __init__(self, hyper_params: Any):
        name = type(self).__name__
        if dataclasses.is_dataclass(hyper_params):
            fixed = {f.name: _as_static(name, f.name, getattr(hyper_params, f.name))
                     for f in dataclasses.fields(hyper_params)}
            hyper_params = dataclasses.replace(cast(Any, hyper_params), **fixed)
            self._check(hyper_params, fixed.keys())
        self.hyper_params = hyper_params
        self._hash = hash((type(self), hyper_params))

    # jit hashes and compares the static definition on every call: keep both cheap.
    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (type(self) is type(other) and self._hash == other._hash  # type: ignore[attr-defined]
                and self.hyper_params == other.hyper_params)  # type: ignore[attr-defined]

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
            if name in self._nonnegative_names and value is not None and _is_concrete(value):
                arr = np.asarray(value)
                if arr.dtype.kind in "biuf" and np.any(arr < 0):
                    raise errors.HyperParamError(
                        opt, name, f"must be >= 0, got {value}",
                        "Optimizers minimise the loss; to maximise, negate the loss.")

    def update_hyper_params(self, **overrides: Any) -> Any:
        """The default hyper-parameters with ``overrides`` applied (for one step).

        ``hyper_params=`` replaces all of them; other keyword arguments replace fields.

        Raises:
            HyperParamError: an unknown name, a negative learning rate, an override of a
                hyper-parameter fixed at construction, or no learning rate at all.
        """
        opt = type(self).__name__
        hp = overrides.pop("hyper_params", self.hyper_params)
        if overrides:
            names = [f.name for f in dataclasses.fields(hp)]
            for name, value in overrides.items():
                if name not in names:
                    raise errors.HyperParamError(
                        opt, name, "does not exist", f"Valid names: {', '.join(names)}.")
                if not _is_numeric(value):
                    raise errors.HyperParamError(
                        opt, name, f"given per step must be a number or a numeric scalar "
                        f"array, got {type(value).__name__} {value!r}",
                        f"For example `apply_gradient(grads, {name}=0.9)`.")
                default = getattr(self.hyper_params, name)
                if name in self._static_names and not _same_static(value, default):
                    raise errors.HyperParamError(
                        opt, name, "changes the structure of the update and is fixed at "
                        "construction", f"Create a new `{opt}({name}=...)` instead.")
                if callable(default):
                    raise errors.HyperParamError(
                        opt, name, "was created as a schedule (a callable), which optax "
                        "evaluates on its own step count; it cannot also be set per step",
                        f"Either pass numbers per step, `{opt}()` + `apply_gradient(grads, "
                        f"{name}=schedule(step))`, or keep the schedule in the constructor.")
                if name in self._switch_names and default in (0, None):
                    raise errors.HyperParamError(
                        opt, name, f"was created as {default!r}, which leaves that part out "
                        "of the update, so it cannot be set per step",
                        f"Create the optimizer with a nonzero `{name}` to vary it per step.")
            hp = dataclasses.replace(hp, **overrides)
            self._check(hp, overrides.keys())
        if self._needs_learning_rate and getattr(hp, "learning_rate", 0.0) is None:
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
        _check_inexact(type(self).__name__, params)
        if self._per_leaf():
            return OptimizerState(step=jnp.zeros((), jnp.int32),
                                  param_states=jax.tree.map(self.init_param_state, params))
        tx = self.transform(self._init_hyper_params())
        with jax.numpy_dtype_promotion("standard"):
            inner = tx.init(params)
        return OptimizerState(step=jnp.zeros((), jnp.int32), param_states=inner)

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
            return new_params, OptimizerState(step=state.step + 1, param_states=new_states)
        tx = self.transform(hyper_params)
        # optax relies on standard promotion (e.g. ``b1 ** count`` with an int32 count);
        # a user's strict mode must not break it. ``apply_updates`` casts back to each
        # param's dtype, so bf16 params stay bf16 even with an f32 learning rate.
        with jax.numpy_dtype_promotion("standard"):
            updates, new_inner = tx.update(grads, state.param_states, params)
            new_params = optax.apply_updates(params, updates)
        return new_params, OptimizerState(step=state.step + 1, param_states=new_inner)

    def create(self, target: Any, focus: Any = None) -> Optimizer:
        """An ``Optimizer`` for ``target`` (an ``nn.Model``, a dict of arrays, any pytree).

        Args:
            target: the parameters to optimize.
            focus: optional traversal (e.g. ``ModelParamTraversal``); only the parameters it
                selects are updated, the others stay bit-for-bit unchanged.
        """
        opt_def: OptimizerDef = self
        if focus is not None:
            from flaxen.optim.multi import MultiOptimizer

            opt_def = MultiOptimizer((focus, self))
        state = opt_def.init_state(_params_of(target))
        return Optimizer(optimizer_def=opt_def, state=state, target=target)


def _keystr(path: tuple) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _same_structure(a: Any, b: Any) -> bool:
    return bool(jax.tree.structure(a) == jax.tree.structure(b))  # type: ignore[operator]


def check_gradient_structure(target: Any, grads: Any) -> None:
    """Raises ``GradientStructureError`` naming the first path where grads differ."""
    if _same_structure(target, grads):
        t_leaves = jax.tree.leaves(target)
        g_leaves = jax.tree.leaves(grads)
        if all(np.shape(t) == np.shape(g) for t, g in zip(t_leaves, g_leaves)):
            return
    t_flat, _ = jax.tree_util.tree_flatten_with_path(target)
    g_flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    t_paths = {_keystr(p): np.shape(v) for p, v in t_flat}
    g_paths = {_keystr(p): np.shape(v) for p, v in g_flat}
    for path, shape in t_paths.items():
        if path not in g_paths:
            raise errors.GradientStructureError(path, "a gradient leaf", "none")
        if g_paths[path] != shape:
            raise errors.GradientStructureError(path, f"shape {shape}", f"shape {g_paths[path]}")
    for path in g_paths:
        if path not in t_paths:
            raise errors.GradientStructureError(path, "no leaf (not in the target)", "a leaf")
    raise errors.GradientStructureError(
        "<root>", f"tree structure {jax.tree.structure(target)}",
        f"{jax.tree.structure(grads)}")


def _params_of(target: Any) -> Any:
    """What the optax transformation sees: a Model's params dict, else the target itself.

    Keeping Models out of the optax state makes it a plain tree of dicts (what optax masks
    and checkpoints expect) and keeps jit's per-call unflatten work to one Model.
    """
    return target.params if isinstance(target, Model) else target


def _grad_params(target: Any, grads: Any) -> Any:
    """Gradients of a Model target: a Model (from ``jax.grad``) or its params dict."""
    if isinstance(target, Model) and isinstance(grads, Model):
        return grads.params
    return grads


@struct.dataclass
class Optimizer:
    """A target (params) with its optimizer state; a pytree, so it passes through ``jit``.

    Attributes:
        optimizer_def: the algorithm and default hyper-parameters (static).
        state: ``OptimizerState`` (``step``: int32 scalar, ``param_states``: optax state).
        target: the parameters, usually an ``nn.Model``.
    """

    optimizer_def: OptimizerDef = struct.field(pytree_node=False)
    state: OptimizerState
    target: Any

    def __init__(self, optimizer_def: OptimizerDef, state: OptimizerState, target: Any):
        d = self.__dict__  # fast path, see _state_init
        d["optimizer_def"] = optimizer_def
        d["state"] = state
        d["target"] = target

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
        params = _params_of(self.target)
        grads = _grad_params(self.target, grads)
        check_gradient_structure(params, grads)
        opt_def = self.optimizer_def
        hp = opt_def.update_hyper_params(**hyper_param_overrides)
        new_params, new_state = opt_def.apply_gradient(hp, params, self.state, grads)
        target = new_params
        if params is not self.target:
            target = dataclasses.replace(self.target, params=new_params)
        return Optimizer(self.optimizer_def, new_state, target)

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
            if np.shape(loss) != ():
                raise errors.FlaxenError(
                    f"loss_fn must return a scalar loss (or `(loss, aux)`), got a loss of "
                    f"shape {np.shape(loss)}. Reduce it, e.g. with `jnp.mean(...)`.")
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
        from flaxen import serialization

        return serialization.to_state_dict(self)

    def restore_state(self, state: dict[str, Any]) -> Optimizer:
        """A copy of this optimizer (used as the template) holding the values of ``state``."""
        from flaxen import serialization

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
        from flaxen import jax_utils, parallel
        from flaxen.optim.replicated import ReplicatedOptimizer

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
        from flaxen import jax_utils, parallel
        from flaxen.optim.replicated import ReplicatedOptimizer

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
