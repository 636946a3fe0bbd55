"""The Module system: parameterised functions that override ``apply``.

A Module subclass overrides ``apply(self, *inputs, **hyperparameters)``. Inside ``apply``,
``self.param(name, shape, init_fn)`` creates (at init) or reads (at call) a parameter, and
calling another Module class, ``nn.Dense(x, features=10)``, runs it as a child with its
own sub-dict of params, named ``Dense_0`` automatically or by ``name=``.

Parameters never live on objects. Each run of a module owns one ``_Frame``: its name,
its parent, its level of the nested params dict, and, at init, a PRNG key. Frames sit
on a thread-local stack (``_context``). The entry points (``init``, ``init_by_shape``,
``call``, ``create``, ``create_by_shape``) open the root frame; ``Model`` binds a
Module class to its params as a pytree that passes through ``jax.jit`` like a dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from flaxen.errors import (
    InvalidNameError,
    ModuleOutsideApplyError,
    NameInUseError,
    ParamNotFoundError,
    ParamShapeError,
    ParamsStructureError,
    SharedModuleError,
    TransformInitError,
)
from flaxen.nn import collection as _coll
from flaxen.nn import init_cache
from flaxen.nn import stochastic as _stoch
from flaxen.nn._context import current_frame, pushed, stacks, trace_state
from flaxen.nn.initializers import InitFn, call_init
from flaxen.traverse_util import path_to_str

Params = dict[str, Any]


def fold_in_str(rng: jax.Array, name: str) -> jax.Array:
    """``fold_in(rng, first 4 bytes of sha1(name))``: a key that depends on the name only."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return jax.random.fold_in(rng, int.from_bytes(digest[:4], "big"))


def _join(parent_path: str, name: str) -> str:
    # Collection keys keep the pre-release spelling ('/BatchNorm_0', root '/'): they are
    # pre-release API (state dicts, capture_module_outputs, truncate_at). Messages print
    # paths with path_to_str instead (see _Frame.label).
    return parent_path.rstrip("/") + "/" + name


class _Frame:
    """One run of one module: its scope of names and its level of the params dict."""

    __slots__ = ("name", "parent", "params", "rng", "path", "keys", "counter", "claimed",
                 "shared", "class_name", "transparent", "trace")

    def __init__(self, name: str | None, parent: _Frame | None, params: Params, rng: Any,
                 class_name: str = "", transparent: bool = False, trace: Any = None):
        self.name = name
        # The JAX trace the entry point ran in: a parameter created under another trace
        # is being created inside a transformation (scan, vmap, ...) that apply started.
        if trace is None:
            trace = parent.trace if parent is not None else trace_state()
        self.trace: Any = trace
        self.class_name = class_name
        self.transparent = transparent
        transparent_parent = parent is not None and parent.transparent
        self.parent = parent
        self.params = params
        self.rng = rng  # None in apply mode
        # path: the Collection key; keys: where this module's params sit in the params
        # dict (a root's own name= is not a level of its params).
        self.keys: tuple[str, ...] = ()
        if parent is None:
            self.path = "/" if name is None else "/" + name
        elif transparent_parent or name is None:
            self.path, self.keys = parent.path, parent.keys
        else:
            self.path, self.keys = _join(parent.path, name), (*parent.keys, name)
        self.counter = 0
        self.claimed: dict[str, str] = {}  # name -> "parameter" | "module" | "shared module"
        self.shared: set[str] = set()  # names reserved by .shared() in this frame

    def label(self, name: str | None = None, collection: str | None = None) -> str:
        """How messages name this module, a child, or an entry (``traverse_util.path_to_str``).

        ``label()`` is this module (``Conv_0``; the root module by its class name, e.g.
        ``CNN``), ``label('Dense_1')`` a child module, and ``label('kernel', 'params')``
        an entry of a collection: ``params/Conv_0/kernel`` (as in a Model's pytree and its
        checkpoints), or ``state/BatchNorm_1/mean``.
        """
        if collection == "state":  # state entries sit under the Collection key
            return path_to_str((collection, self.path, name))
        if collection is not None:
            return path_to_str((collection, *self.keys, name))
        keys = self.keys if name is None else (*self.keys, name)
        if keys:
            return path_to_str(keys)
        root = self
        while root.parent is not None:
            root = root.parent
        return root.class_name

    @property
    def is_init(self) -> bool:
        return self.rng is not None

    def create_name(self) -> str:
        """The next value of the per-parent counter shared by all unnamed children."""
        n = self.counter
        self.counter += 1
        return str(n)

    def claim(self, name: str, kind: str) -> None:
        """Reserves ``name`` for a ``kind``; raises if it is taken (shared modules may repeat)."""
        _check_name(name)
        previous = self.claimed.get(name)
        if previous is not None and not (previous == kind == "shared module"):
            raise NameInUseError(self.label(), name, kind, previous)
        self.claimed[name] = kind

    def on_stack(self) -> bool:
        return any(f is self for f in stacks.frames)


# Functions called as ``record(frame, cls, args, kwargs, output)`` after every module run
# (``nn.summary`` appends one while it traces a model).
_call_recorders: list[Callable[..., None]] = []


def _has_tracer(tree: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _init_value(frame: _Frame, path: str, rng: Any, make: Callable[[], Any],
                strict: bool = True) -> Any:
    """``make()`` (an initial value, or a child's key) without leaking it out of a trace.

    At the trace the entry point ran in, this is just ``make()``. Inside a transformation
    that ``apply`` started (``lax.scan``, ``vmap``, ``checkpoint``, ``cond``, ...), the
    value is computed eagerly with ``jax.ensure_compile_time_eval``, so it is created once,
    as a concrete array, and every step and every later call reads that same value. If
    it cannot be concrete (the key is itself traced, e.g. ``init`` under ``jax.jit``, or
    the initializer reads the loop's inputs), ``TransformInitError`` says how to create it
    before the transformation. With ``strict=False`` (a child's key), a traced result is
    returned as is: the error comes only if that child actually creates a parameter.
    """
    if trace_state() == frame.trace:
        return make()
    if _has_tracer(rng):
        if strict:
            raise TransformInitError(path)
        return make()
    with jax.ensure_compile_time_eval():
        value = make()
    if strict and _has_tracer(value):
        raise TransformInitError(path)
    return value


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise InvalidNameError(f"A module or parameter name must be a string, got {name!r}.")
    if not name or "/" in name or ":" in name:
        raise InvalidNameError(
            f"Name {name!r} is not allowed: names must be non-empty and contain no slashes "
            "or colons (slashes separate the levels of a parameter path)."
        )


class Module:
    """Base class of all modules. Subclasses override ``apply``.

    Calling the class inside another module's ``apply`` runs it and returns its output;
    at top level use the class methods ``init``/``init_by_shape``/``call``.
    """

    # Class-level configuration, set by partial/shared/module_method subclasses.
    _partial_kwargs: dict[str, Any] = {}
    _default_name: str | None = None
    _shared_name: str | None = None
    _shared_frame: _Frame | None = None
    _transparent: bool = False
    _frame: _Frame

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must override `apply`.")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__doc__ is None and cls.apply.__doc__:
            cls.__doc__ = cls.apply.__doc__

    # -- Running as a child -------------------------------------------------------------

    def __new__(cls, *args: Any, name: str | None = None, **kwargs: Any) -> Any:
        frame = current_frame()
        if frame is None:
            raise ModuleOutsideApplyError(cls.__name__)
        kwargs = {**cls._partial_kwargs, **kwargs}
        if cls._shared_name is not None:
            if name is not None:
                raise SharedModuleError(
                    f'Cannot override the name of shared module "{cls._shared_name}" '
                    f"(got name={name!r}); pass the name to `.shared(name=...)` instead."
                )
            parent, name, kind = cls._shared_frame, cls._shared_name, "shared module"
            assert parent is not None
            if not parent.on_stack():
                raise SharedModuleError(
                    f'Shared module "{parent.label(name)}" was used after the module '
                    "that created it returned. Create it with `.shared()` inside the apply "
                    "of a module that encloses every use."
                )
        else:
            parent, kind = frame, "module"
            if name is None:
                name = cls._default_name or f"{cls.__name__}_{parent.create_name()}"
        parent.claim(name, kind)
        if parent.is_init and name not in parent.params:
            params: Params = {}
            parent.params[name] = params
            rng = _init_value(parent, parent.label(name), parent.rng,
                              lambda: fold_in_str(parent.rng, name), strict=False)
        else:
            if name not in parent.params:
                raise ParamNotFoundError(parent.label(name, "params"), "module",
                                         list(parent.params))
            params = parent.params[name]
            if not isinstance(params, dict):
                raise ParamsStructureError(parent.label(name), params)
            rng = None
        return cls._run(name, parent, params, rng, args, kwargs)

    @classmethod
    def _run(cls, name: str | None, parent: _Frame | None, params: Params, rng: Any,
             args: tuple, kwargs: dict, trace: Any = None) -> Any:
        frame = _Frame(name, parent, params, rng, cls.__name__, cls._transparent, trace)
        instance = object.__new__(cls)
        instance._frame = frame
        with pushed(stacks.frames, frame):
            out = instance.apply(*args, **kwargs)
        if stacks.captures:
            _coll.record_output(frame, out)
        for record in _call_recorders:  # nn.summary: each module's inputs and output
            record(frame, cls, args, kwargs, out)
        return out

    # -- Inside apply -------------------------------------------------------------------

    def param(self, name: str, shape: Sequence[int] | None, initializer: InitFn,
              dtype: DTypeLike = jnp.float32) -> Any:
        """Creates (at init) or reads (at call) the parameter ``name`` of this module.

        Args:
          name: the key in this module's params dict (``kernel``, ``bias``, ...).
          shape: the expected shape, checked against the stored value; None for a
            parameter that is an arbitrary pytree.
          initializer: ``initializer(key, shape, dtype) -> array``, called only at init;
            a two-argument ``initializer(key, shape)`` works too (its result is cast).
          dtype: the storage dtype passed to the initializer (a layer's ``param_dtype``).
            At call time the stored value is returned as it is.

        Raises:
          ParamShapeError: the stored parameter has another shape.
          ParamNotFoundError: at call time, the params have no such entry.
          NameInUseError: the name is already a parameter or child of this module.
        """
        frame = self._frame
        frame.claim(name, "parameter")
        path = frame.label(name, "params")
        if frame.is_init and name not in frame.params:
            value = _init_value(frame, path, frame.rng,
                                lambda: call_init(initializer, fold_in_str(frame.rng, name), shape,
                                                  dtype))
            frame.params[name] = value
        elif name in frame.params:
            value = frame.params[name]
        else:
            raise ParamNotFoundError(path, "parameter", list(frame.params))
        if shape is not None:
            got = tuple(getattr(value, "shape", ()))
            if got != tuple(shape):
                raise ParamShapeError(path, got, tuple(shape))
        return value

    def get_param(self, name: str) -> Any:
        """The stored value under ``name`` (a parameter, or a child's params dict)."""
        if name not in self._frame.params:
            raise ParamNotFoundError(self._frame.label(name, "params"), "parameter",
                                     list(self._frame.params))
        return self._frame.params[name]

    def state(self, name: str, shape: Sequence[int] | None = None,
              initializer: InitFn | None = None,
              collection: _coll.Collection | None = None) -> _coll.ModuleState:
        """Declares a state variable of this module; returns a handle with ``.value``.

        The value lives in ``collection`` or, by default, the active ``nn.stateful``
        collection. If it does not exist yet and ``initializer`` is given, it is set to
        ``initializer(key, shape, float32)`` (or ``initializer(key, shape)``) with a key
        derived from this module's path.
        """
        collection = _coll.get_state() if collection is None else collection
        handle = _coll.ModuleState(collection, name)
        if initializer is not None and not handle.exists():
            base = self._state_base()
            handle.value = _init_value(
                self._frame, self._frame.label(name, "state"), base,
                lambda: call_init(initializer, self._state_key(base, name), shape))
        return handle

    def _state_base(self) -> jax.Array:
        frame: _Frame | None = self._frame
        while frame is not None and not frame.is_init:
            frame = frame.parent
        return frame.rng if frame is not None else jax.random.PRNGKey(0)

    def _state_key(self, base: jax.Array, name: str) -> jax.Array:
        return fold_in_str(fold_in_str(base, "state"), _join(self._frame.path, name))

    def is_initializing(self) -> bool:
        """True while this module creates its parameters (``init``)."""
        return self._frame.is_init

    def is_stateful(self) -> bool:
        """True if a state collection is active."""
        return _coll.is_stateful()

    @property
    def path(self) -> str:
        """The slash path of this module (``/Conv_0``): the key of its entries in a
        ``Collection`` (state, captured outputs), the pre-release spelling."""
        return self._frame.path

    @property
    def label(self) -> str:
        """Where this module is, for messages: the root module's class, then the names
        down to this module (``CNN/Conv_0``), spelled by ``traverse_util.path_to_str``."""
        return path_to_str(self._frame.label())

    # -- Entry points -------------------------------------------------------------------

    @classmethod
    def _root(cls, name: str | None, params: Params, rng: Any, args: tuple,
              kwargs: dict) -> Any:
        kwargs = {**cls._partial_kwargs, **kwargs}
        name = name if name is not None else cls._default_name
        if name is not None:
            _check_name(name)
        return cls._run(name, current_frame(), params, rng, args, kwargs, trace_state())

    @classmethod
    def init(cls, _rng: jax.Array, *args: Any, name: str | None = None,
             **kwargs: Any) -> tuple[Any, Params]:
        """Runs ``apply`` on real inputs, creating parameters. Returns ``(output, params)``.

        If no ``nn.stochastic`` scope is active, one derived from ``_rng`` is opened, so
        modules that draw keys (dropout) also run at init.
        """
        params: Params = {}
        scope = (contextlib.nullcontext() if _stoch.is_stochastic()
                 else _stoch._init_scope(fold_in_str(_rng, "stochastic")))
        with scope:
            out = cls._root(name, params, _rng, args, kwargs)
        return out, params

    @classmethod
    def init_by_shape(cls, _rng: jax.Array, input_specs: Iterable[Any], *args: Any,
                      name: str | None = None, **kwargs: Any) -> tuple[Any, Params]:
        """Like ``init`` but from input shapes, spending no FLOPs on the inputs.

        The first call traces ``apply`` and compiles the initializers (seconds for a large
        model); a later call with the same module, shapes and arguments reuses that
        program and only runs the initializers (``flaxen.nn.init_cache``).

        Args:
          _rng: the PRNG key for the initializers.
          input_specs: one entry per leading input of ``apply``: ``(shape, dtype)``, a
            plain shape (float32), or a ``jax.ShapeDtypeStruct``.
          *args, **kwargs: further arguments of ``apply``.

        Returns:
          ``(output_shapes, params)``: output as ``jax.ShapeDtypeStruct``s, real params.
        """
        specs = [_as_spec(s) for s in input_specs]
        out_shapes: list[Any] = []
        state = _coll.get_state() if _coll.is_stateful() else None
        outer_key = _stoch.make_rng() if _stoch.is_stochastic() else None

        # Mutable Collections passed as arguments (a decoding Cache being defined) are
        # written inside the jit below: each gets a mutable stand-in there, and what was
        # stored comes back out (arrays as outputs, other values such as descriptors
        # through Python), then lands in the caller's collection.
        passed: dict[int | str, Any] = {
            i: a for i, a in enumerate(args) if _is_mutable_collection(a)}
        passed.update({k: v for k, v in kwargs.items() if _is_mutable_collection(v)})
        static_out: dict[Any, Any] = {}

        def init_params(rng: jax.Array, key: Any) -> tuple[Params, dict[str, Any], Any]:
            inputs = [jnp.zeros(s.shape, s.dtype) for s in specs]
            call_args, call_kwargs = list(args), dict(kwargs)
            scopes = contextlib.ExitStack()
            with scopes:
                if key is not None:
                    scopes.enter_context(_stoch.stochastic(key))
                new_state = (scopes.enter_context(_coll.stateful(_coll.Collection()))
                             if state is not None else None)
                inner = {k: scopes.enter_context(c.mutate()) for k, c in passed.items()}
                for k, c in inner.items():
                    if isinstance(k, int):
                        call_args[k] = c
                    else:
                        call_kwargs[k] = c
                out, params = cls.init(rng, *inputs, *call_args, name=name, **call_kwargs)
            out_shapes.append(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), out))
            arrays = {}
            for k, c in inner.items():
                arrays[k], static_out[k] = _split_arrays(c.as_dict())
            return params, (new_state.as_dict() if new_state is not None else {}), arrays

        # Only params leave the jitted function: XLA drops the forward pass as dead code.
        # Same module, shapes and arguments again: reuse the compiled program (init_cache).
        key = None if passed or current_frame() is not None else init_cache.make_key(
            cls, name, specs, args, kwargs, state is not None, outer_key is not None)
        fn, out_shapes = init_cache.lookup(key) or (jax.jit(init_params), out_shapes)
        params, new_values, arrays = fn(_rng, outer_key)
        init_cache.store(key, fn, out_shapes)
        if state is not None:
            for path, value in new_values.items():
                state._state.setdefault(path, value)
        for k, c in passed.items():
            c._state.update(_join_arrays(arrays[k], static_out[k]))
        return out_shapes[-1], params  # the latest trace (jit retraces if config changed)

    @classmethod
    def call(cls, params: Params, *args: Any, name: str | None = None,
             _rng: jax.Array | None = None, **kwargs: Any) -> Any:
        """Runs ``apply`` with existing ``params``. ``_rng`` feeds dropout, if given."""
        if cls._transparent:
            params = {"0": params}
        if not isinstance(params, dict):
            raise ParamsStructureError(name or cls.__name__, params)
        scope = _stoch.stochastic(_rng) if _rng is not None else contextlib.nullcontext()
        with scope:
            return cls._root(name, params, None, args, kwargs)

    @classmethod
    def init_with_state(cls, _rng: jax.Array, *args: Any, name: str | None = None,
                        **kwargs: Any) -> tuple[Any, Params, _coll.Collection]:
        """The explicit form of ``with nn.stateful() as state: init(...)``.

        Returns ``(output, params, state)``; ``state`` holds e.g. BatchNorm statistics.
        """
        with _coll.stateful() as state:
            out, params = cls.init(_rng, *args, name=name, **kwargs)
        return out, params, state

    @classmethod
    def call_with_state(cls, params: Params, state: _coll.Collection | None, *args: Any,
                        _rng: jax.Array | None = None, _mutable: bool = True,
                        name: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """The explicit form of ``with nn.stateful(state) as new: call(...)``.

        Returns ``(output, new_state)``. Works under ``jit``/``grad``/``vmap``/``scan``
        because the state goes in and comes out as ordinary values.
        """
        with _coll.stateful(state, mutable=_mutable) as new_state:
            out = cls.call(params, *args, name=name, _rng=_rng, **kwargs)
        return out, new_state

    @classmethod
    def create(cls, _rng: jax.Array, *args: Any, name: str | None = None,
               **kwargs: Any) -> tuple[Any, Model]:
        """``init``, then wrap the params in a ``Model``. Returns ``(output, model)``."""
        out, params = cls.init(_rng, *args, name=name, **kwargs)
        return out, Model(cls, params)

    @classmethod
    def create_by_shape(cls, _rng: jax.Array, input_specs: Iterable[Any], *args: Any,
                        name: str | None = None, **kwargs: Any) -> tuple[Any, Model]:
        """``init_by_shape``, then wrap the params in a ``Model``."""
        out, params = cls.init_by_shape(_rng, input_specs, *args, name=name, **kwargs)
        return out, Model(cls, params)

    # -- Deriving classes ---------------------------------------------------------------

    @classmethod
    def partial(cls, *, name: str | None = None, **kwargs: Any) -> type[Module]:
        """A subclass with keyword arguments (and optionally a default name) pre-bound.

        Call-time keyword arguments override pre-bound ones. Partials with the same
        hashable arguments return the same class, so ``jax.jit`` does not retrace.
        """
        try:
            key: Any = (cls, name, tuple(sorted(kwargs.items())))
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in _PARTIALS:
            return _PARTIALS[key]
        sub = type(cls.__name__, (cls,), {
            "_partial_kwargs": {**cls._partial_kwargs, **kwargs},
            "_default_name": name if name is not None else cls._default_name,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        })
        if key is not None:
            _PARTIALS[key] = sub
        return sub

    @classmethod
    def shared(cls, *, name: str | None = None, **kwargs: Any) -> type[Module]:
        """A subclass whose every call, anywhere below this module, uses one set of params.

        Must be called inside an ``apply``; the params live under the module where
        ``.shared()`` was called, named ``name`` or ``ClassName_N``.
        """
        frame = current_frame()
        if frame is None:
            raise SharedModuleError(
                f"{cls.__name__}.shared() must be called inside a module's apply; at top "
                "level, reuse the same Model or params instead."
            )
        if name is None:
            name = f"{cls.__name__}_{frame.create_name()}"
        _check_name(name)
        if name in frame.shared:
            raise SharedModuleError(f'In module "{frame.label()}": shared module named "{name}" '
                                    "already exists; give the second one another name.")
        frame.shared.add(name)
        base = cls.partial(**kwargs)
        return type(cls.__name__, (base,), {
            "_shared_name": name, "_shared_frame": frame,
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
        })


_PARTIALS: dict[Any, type[Module]] = {}


def _is_mutable_collection(x: Any) -> bool:
    return isinstance(x, _coll.Collection) and x._mutable


def _split_arrays(values: dict[str, Any]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """``{path: value}`` -> (the array leaves, which may leave a jit, and the rest)."""
    arrays, rest = {}, {}
    for path, value in values.items():
        leaves, treedef = jax.tree.flatten(value)
        is_array = [isinstance(x, (jax.Array, np.ndarray)) for x in leaves]
        arrays[path] = [x for x, a in zip(leaves, is_array) if a]
        rest[path] = (treedef, [None if a else x for x, a in zip(leaves, is_array)])
    return arrays, rest


def _join_arrays(arrays: dict[str, list[Any]], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``_split_arrays``."""
    values = {}
    for path, (treedef, leaves) in rest.items():
        it = iter(arrays[path])
        values[path] = jax.tree.unflatten(treedef, [next(it) if x is None else x
                                                    for x in leaves])
    return values


def _as_spec(spec: Any) -> jax.ShapeDtypeStruct:
    if isinstance(spec, jax.ShapeDtypeStruct):
        return spec
    if (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], (tuple, list))
            and not isinstance(spec[1], (tuple, list, int))):
        return jax.ShapeDtypeStruct(tuple(spec[0]), spec[1])
    if isinstance(spec, (tuple, list)) and all(isinstance(d, int) for d in spec):
        return jax.ShapeDtypeStruct(tuple(spec), jnp.float32)
    raise ValueError(
        f"Each input spec must be (shape, dtype), a plain shape, or a jax.ShapeDtypeStruct; "
        f"got {spec!r}."
    )


def module(fun: Callable[..., Any]) -> type[Module]:
    """Turns a plain function into a Module (it can call other modules, not ``self.param``)."""

    def apply(self: Module, *args: Any, **kwargs: Any) -> Any:
        return fun(*args, **kwargs)

    apply.__doc__ = fun.__doc__
    return type(fun.__name__, (Module,), {
        "apply": apply, "__doc__": fun.__doc__,
        "__module__": fun.__module__, "__qualname__": fun.__qualname__,
    })


class module_method:  # noqa: N801 - lower case, as in the pre-release API
    """Decorator for a second entry point of a module (``model.decode(z)``).

    Looked up on a Module class ``C``, it gives a subclass of ``C`` whose ``apply`` is the
    decorated function, so it runs on the same params (and inherits C's partial kwargs).
    Looked up on ``self`` inside ``apply``, it is a plain bound method: it runs in the
    same scope, so ``self.decode(z)`` reads and creates this module's own params.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._cache: dict[type, type[Module]] = {}

    def __get__(self, instance: Any, owner: type[Module]) -> Any:
        if instance is not None:
            return self.fn.__get__(instance, owner)
        if owner not in self._cache:
            self._cache[owner] = type(self.fn.__name__, (owner,), {
                "apply": self.fn, "__module__": owner.__module__,
                "__qualname__": f"{owner.__qualname__}.{self.fn.__name__}",
            })
        return self._cache[owner]


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A Module class bound to its params: callable, and a pytree whose leaves are params.

    The module class is static metadata, so ``jax.jit``, ``jax.grad``, ``jax.vmap`` and
    ``jax.tree.map`` see only the params dict.
    """

    module: type[Module]
    params: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.call(self.params, *args, **kwargs)

    def call_with_state(self, state: _coll.Collection | None, *args: Any,
                        **kwargs: Any) -> tuple[Any, Any]:
        """``(output, new_state)``; see ``Module.call_with_state``."""
        return self.module.call_with_state(self.params, state, *args, **kwargs)

    def replace(self, **updates: Any) -> Model:
        """A copy with fields replaced, e.g. ``model.replace(params=ema_params)``."""
        return dataclasses.replace(self, **updates)

    def truncate_at(self, module_path: Any) -> Model:
        """A model that returns the outputs recorded at ``module_path`` (a path or a pytree
        of paths) instead of its own output; each is a list, one entry per call."""
        return self.replace(module=TruncatedModule.partial(wrapped_module=self.module,
                                                           truncate_path=module_path))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("module", "params"):
            raise AttributeError(name)
        attr = getattr(self.module, name, None)
        if inspect.isclass(attr) and issubclass(attr, Module):
            method = attr
            return lambda *args, **kwargs: method.call(self.params, *args, **kwargs)
        raise AttributeError(f'No attribute named "{name}" on Model({self.module.__name__}).')


jax.tree_util.register_dataclass(Model, data_fields=["params"], meta_fields=["module"])


class TruncatedModule(Module):
    """Runs a wrapped module and returns the outputs captured at the given path(s)."""

    _transparent = True

    def apply(self, *args: Any, wrapped_module: type[Module] | None = None,
              truncate_path: Any = None, **kwargs: Any) -> Any:
        if wrapped_module is None or truncate_path is None:
            raise ValueError("`wrapped_module` and `truncate_path` are required keyword arguments")
        with _coll.capture_module_outputs() as captured:
            wrapped_module(*args, name="0", **kwargs)
        return jax.tree.map(lambda p: captured[p], truncate_path)
