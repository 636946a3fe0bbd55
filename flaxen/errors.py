"""Every exception flaxen raises, in one place.

Each message says where (the module path), what was expected, what was got, and the
most likely fix. All classes derive from ``FlaxenError``, which is a ``ValueError`` so
that code written against the pre-release Flax (which raised ``ValueError``) still
catches them.
"""

from __future__ import annotations


class FlaxenError(ValueError):
    """Base class of every flaxen error."""


# -- Module system -------------------------------------------------------------------


class ModuleOutsideApplyError(FlaxenError):
    """A Module class was called outside any ``apply`` and outside the entry points."""

    def __init__(self, class_name: str):
        super().__init__(
            f"{class_name}(...) was called outside any Module.apply. Calling a Module class "
            "only runs it inside another module's apply. At top level, create parameters "
            f"with `out, params = {class_name}.init(rng, *inputs, ...)` (or `init_by_shape`), "
            f"then run it with `{class_name}.call(params, *inputs, ...)` or "
            f"`nn.Model({class_name}, params)(*inputs)`."
        )


class NameInUseError(FlaxenError):
    """A name is used twice in one scope (two children, two params, or a param and a child)."""

    def __init__(self, path: str, name: str, kind: str, other_kind: str):
        fix = (
            "use `.shared()` when the parameters are meant to be shared, or pass a distinct `name=`"
            if kind == other_kind == "module"
            else "give one of them a different name"
        )
        super().__init__(
            f'In module "{path}": the name "{name}" is used for a {kind}, but it is already '
            f"used for a {other_kind} in the same module. Names must be unique per module; "
            f"{fix}."
        )


class ParamShapeError(FlaxenError):
    """A parameter was requested with a shape that differs from the stored one."""

    def __init__(self, path: str, expected: tuple, got: tuple):
        super().__init__(
            f'Parameter "{path}" is stored with shape {tuple(expected)}, but the module now '
            f"asks for shape {tuple(got)}. Most likely an input has a different size than the "
            "one the parameters were initialised with (for example a different number of "
            "features), or the params belong to another model. Check the input shape, or "
            "re-initialise the parameters."
        )


class ParamNotFoundError(FlaxenError):
    """A parameter or child module has no entry in the params passed to ``call``."""

    def __init__(self, path: str, kind: str, available: list[str]):
        super().__init__(
            f'No {kind} named "{path}" in the params passed to this model. The params at '
            f"that level have the keys {sorted(available)}. Most likely the params belong "
            "to a different model or were built with other hyper-parameters; create them "
            "with `init`/`init_by_shape` of this module, or check the module's `name=`s."
        )


class ParamsStructureError(FlaxenError):
    """``params`` is not a nested dict of the expected layout."""

    def __init__(self, path: str, got: object):
        super().__init__(
            f'Expected the params for module "{path}" to be a dict (a nested dict of arrays '
            f"as returned by `init`), got {type(got).__name__}. If you have a `Model`, pass "
            "`model.params`, or call the model directly."
        )


class SharedModuleError(FlaxenError):
    """A shared module was created or named in a way that cannot work."""


class InvalidNameError(FlaxenError):
    """A module or parameter name is not a string, or contains a slash or a colon."""


# -- State and randomness ------------------------------------------------------------


class MissingStateError(FlaxenError):
    """A module needs state (e.g. BatchNorm statistics) but none was provided."""

    def __init__(self, path: str, what: str = "state"):
        super().__init__(
            f'Module "{path}" needs {what}, but no state collection is active. Either use '
            "the explicit path: `out, params, state = Module.init_with_state(rng, x)` and "
            "`out, new_state = model.call_with_state(state, x)`, or wrap the call in "
            "`with nn.stateful(state) as new_state:` (opened inside any jax.jit/grad)."
        )


class StateEntryMissingError(MissingStateError):
    """A state collection is active, but it has no entry for this module."""

    def __init__(self, path: str, what: str, have: list[str]):
        # Imported here: traverse_util imports this module. The Collection's keys are
        # stored in the pre-release spelling ('/BatchNorm_0'); the message prints them in
        # the one spelling of paths, like the module path it names.
        from flaxen.traverse_util import path_to_str

        entries = sorted(path_to_str(h) or "<root>" for h in have)
        FlaxenError.__init__(
            self,
            f'Module "{path}" needs {what} from the state collection, but the collection '
            f"has no entry for it (its entries: {entries or 'none, it is empty'}). "
            "Pass the state made by `init_with_state` (or returned by the training step), "
            "not an empty `nn.Collection()`; a module path that differs from the one at init "
            "(another `name=`) gives this error too.",
        )


class CollectionScopeError(FlaxenError):
    """``Collection.store`` from the wrong place (outside a module, the anchor itself,
    outside the collection's scope, or two unnamed top-level modules)."""


class ImmutableStateError(FlaxenError):
    """State was written to a collection that is not mutable."""

    def __init__(self, path: str):
        super().__init__(
            f'Module "{path}" tried to update its state, but the state collection is not '
            "mutable. For evaluation pass a flag such as `use_running_average=True` so the "
            "module only reads its state; to update it use `collection.mutate()` or "
            "`nn.stateful(state)` (mutable by default), or `call_with_state`."
        )


class StateTraceError(FlaxenError):
    """A stateful or stochastic scope was opened outside the current JAX transformation."""

    def __init__(self, path: str, what: str):
        super().__init__(
            f'Module "{path}" used {what} inside a JAX transformation (jit, grad, vmap, scan) '
            "but the scope providing it was opened outside that transformation. Its values "
            "would leak out of the trace (and random keys would be baked into the compiled "
            "function). Open the `nn.stateful(...)`/`nn.stochastic(...)` scope inside the "
            "transformed function, or pass state and keys explicitly with "
            "`model.call_with_state(state, x, _rng=key)` / `model(x, _rng=key)`."
        )


class MissingRngError(FlaxenError):
    """A module needs random numbers (e.g. dropout) but no RNG was provided."""

    def __init__(self, path: str, module_class: str = "", what: str = "a random key"):
        who = f'Module "{path}"' + (f" (class {module_class})" if module_class else "")
        super().__init__(
            f"{who} asked for {what} (nn.make_rng, e.g. for dropout), but no random key "
            "was provided. Pass one explicitly: `model(x, _rng=key)`, "
            "`Module.call(params, x, _rng=key)`, or with state "
            "`model.call_with_state(state, x, _rng=key)`; or wrap the call in "
            "`with nn.stochastic(key):`. For evaluation, pass `deterministic=True` "
            "(or `train=False`) so that no key is needed."
        )


# -- Shapes of user inputs -------------------------------------------------------------


class ShapeError(FlaxenError):
    """An input has the wrong rank or size for a layer."""

    def __init__(self, path: str, what: str, expected: object, got: object, fix: str = ""):
        msg = f'In module "{path}": {what}: expected {expected}, got {got}.'
        if fix:
            msg += f" {fix}"
        super().__init__(msg)


# -- Layer hyperparameters -------------------------------------------------------------


class LayerArgumentError(FlaxenError):
    """A layer got a hyperparameter or input dtype it cannot work with."""

    def __init__(self, path: str, what: str, expected: object, got: object, fix: str = ""):
        msg = f'In module "{path}": {what}: expected {expected}, got {got}.'
        if fix:
            msg += f" {fix}"
        super().__init__(msg)


# -- Serialization and checkpoints -----------------------------------------------------


class SerializationError(FlaxenError):
    """Bytes or a state dict cannot be turned into the requested object.

    Raised for damaged or hostile data (truncated, random bytes, absurd sizes, unknown
    dtypes), for a state dict whose structure does not fit the target, and for values
    that cannot be written (object dtypes, non-string dict keys).
    """


class CheckpointError(FlaxenError):
    """Base class of the checkpoint errors (``flaxen.training.checkpoints``)."""


class CheckpointNotFoundError(CheckpointError):
    """A requested checkpoint directory or step does not exist."""


class CheckpointExistsError(CheckpointError):
    """Saving would overwrite a checkpoint (or go behind a newer one) with overwrite=False."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, read-only directory, ...); nothing was lost."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not match the target; ``.report`` lists every difference."""

    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


# -- Optimizers and parallelism ------------------------------------------------------------


class HyperParamError(FlaxenError):
    """An optimizer hyper-parameter is missing, unknown, out of range, or not overridable."""

    def __init__(self, optimizer: str, name: str, problem: str, fix: str = ""):
        msg = f"{optimizer}: hyper-parameter `{name}` {problem}."
        if fix:
            msg += f" {fix}"
        super().__init__(msg)


class GradientStructureError(FlaxenError):
    """Gradients do not have the structure (paths, shapes) of the optimizer's target."""

    def __init__(self, path: str, expected: object, got: object, fix: str = ""):
        msg = (
            f'Gradients do not match the optimizer target at "{path}": expected {expected}, '
            f"got {got}."
        )
        msg += " " + (fix or (
            "Compute gradients with respect to `optimizer.target`, e.g. "
            "`jax.grad(loss_fn)(optimizer.target)`, so they mirror the target exactly."
        ))
        super().__init__(msg)


class ParamDtypeError(FlaxenError):
    """An optimizer was asked to update a parameter that is not floating."""

    def __init__(self, optimizer: str, path: str, dtype: object):
        super().__init__(
            f'{optimizer}: the parameter "{path}" has dtype {dtype}; expected a floating (or '
            "complex) parameter, since an update would round an integer one (small steps "
            "to 0). Cast it, e.g. `jax.tree.map(lambda x: x.astype(jnp.float32), params)`, "
            "or leave it out of what is optimized (keep it outside the params, or optimize "
            "the rest with `create(target, focus=...)`)."
        )


class NonFiniteError(FlaxenError):
    """``optim.check_finite`` found a NaN or infinity in the loss or a gradient."""

    def __init__(self, where: str):
        super().__init__(
            f"Training stopped: {where} is not finite (NaN or inf). Common causes: a "
            "learning rate that is too high, log/sqrt/division of 0, or bad input data. "
            "Lower the learning rate, clip gradients (e.g. `optim.Optax(optax.chain("
            "optax.clip_by_global_norm(1.0), optax.adam(1e-3)))`), or use "
            "`optim.DynamicScale` with float16."
        )


class BatchShardingError(FlaxenError):
    """A batch cannot be split evenly along the mesh's batch axis."""

    def __init__(self, path: str, size: int, devices: int, axis_name: str):
        super().__init__(
            f'Cannot split the batch array at "{path}" along mesh axis "{axis_name}": its '
            f"leading dimension is {size}, which is not divisible by the {devices} devices "
            f"on that axis. Use a global batch size that is a multiple of {devices} (for "
            f"example {max(devices, size - size % devices)}), or drop the last partial batch."
        )


class ReplicationError(FlaxenError):
    """An array cannot be replicated or brought back to one device as asked."""


# -- JAX transformations inside apply, decoding caches, scans ---------------------------


class TransformInitError(FlaxenError):
    """A parameter would be created inside a JAX transformation that ``apply`` started,
    from values that only exist inside it (so it would leak out as a tracer)."""

    def __init__(self, path: str, transform_hint: str = ""):
        super().__init__(
            f'Parameter "{path}" would be created inside a JAX transformation (lax.scan, '
            "fori_loop, while_loop, vmap, checkpoint/remat, cond) started inside apply, "
            "but its initial value depends on traced values (the init is itself under "
            "jax.jit, e.g. init_by_shape, or the initializer reads the loop's inputs), so "
            "it cannot be created once outside the loop. Fix: create it before the "
            "transformation and reuse it inside: `cell = Cell.shared(name='cell')`, "
            "`if self.is_initializing(): cell(carry, xs[0])`, then call `cell` in the loop; "
            "or use "
            "`flaxen.jax_utils.scan_in_dim(Cell.partial(name='cell'), carry, xs)` or "
            f"`nn.RNN`, which do this for you.{transform_hint}"
        )


class CacheError(FlaxenError):
    """A decoding ``nn.attention.Cache`` is missing, not initialised, or used past its end."""

    def __init__(self, path: str, what: str, expected: object, got: object, fix: str):
        super().__init__(f'In module "{path}": {what}: expected {expected}, got {got}. {fix}')


class ScanAxisError(FlaxenError):
    """``jax_utils.scan_in_dim`` was asked to scan over an axis an input does not have."""


class DistributedConfigError(FlaxenError):
    """A multi-process run is configured inconsistently (flags, process counts, batch sizes)."""


# -- Sharding rules (flaxen.sharding) ------------------------------------------------------


class ShardingRuleError(FlaxenError):
    """A sharding rule cannot lay out a parameter over the mesh (unknown axis, rank, size)."""

    def __init__(self, path: str, shape: tuple, rule: str, problem: str, fix: str):
        super().__init__(f'Cannot shard the parameter "{path}" of shape {shape} with the rule '
                         f"{rule}: {problem}. {fix}")
