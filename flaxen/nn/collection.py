"""Non-trainable state (BatchNorm statistics, decoding caches) and output capture.

A ``Collection`` is a flat, immutable pytree mapping a module path (``'/BatchNorm_0'``) to
a value. ``mutate()`` gives a mutable copy that modules write into while a block runs;
the original never changes. The pre-release spellings are kept:

    with nn.stateful(state) as new_state:   # opened inside jit/grad
        y = model(x)

and the explicit path does the same without hidden context:
``y, new_state = model.call_with_state(state, x)``.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Self, TypeVar, cast

import jax

from flaxen.errors import (
    CollectionScopeError,
    FlaxenError,
    ImmutableStateError,
    MissingStateError,
    StateEntryMissingError,
    StateTraceError,
)
from flaxen.nn._context import current_frame, current_path, pushed, stacks, trace_state


class Collection:
    """A flat ``{module_path: value}`` store, anchored at the module that created it.

    Paths are relative to the anchor (the module running when the Collection was made,
    or the top level), so a Collection made inside ``/a`` stores ``/b`` for ``/a/b``.
    """

    def __init__(self, state: dict[str, Any] | None = None):
        self._state: dict[str, Any] = dict(state or {})
        self._anchor = current_frame()
        self._mutable = False
        self._trace: Any = None
        self._root: Any = None  # the top-level module frame that stored first (per mutate)

    @property
    def state(self) -> Mapping[str, Any]:
        """The ``{path: value}`` dict, read-only (write through ``store`` in ``mutate()``)."""
        return types.MappingProxyType(self._state)

    def as_dict(self) -> dict[str, Any]:
        """A shallow copy of the ``{path: value}`` dict."""
        return dict(self._state)

    @property
    def mutable(self) -> bool:
        """Whether ``store`` may write (inside ``mutate()`` or a mutable ``nn.stateful``)."""
        return self._mutable

    def with_state(self, state: Mapping[str, Any]) -> Self:
        """An immutable copy of this Collection (same class and anchor) holding ``state``,
        a ``{path: value}`` dict, instead of its own entries."""
        new = self._clone()
        new._state = dict(state)
        return cast(Self, new)

    def __getitem__(self, path: str) -> Any:
        return self._state[path]

    def __contains__(self, path: object) -> bool:
        return path in self._state

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._state!r})"

    @contextlib.contextmanager
    def mutate(self) -> Iterator[Self]:
        """Yields a mutable copy, which becomes immutable again when the block ends."""
        clone = self._clone()
        clone._mutable = True
        clone._trace = trace_state()
        try:
            yield clone
        finally:
            clone._mutable = False

    def _clone(self) -> Self:
        clone = type(self).__new__(type(self))
        clone._state = dict(self._state)
        clone._anchor = self._anchor
        clone._mutable = False
        clone._trace = None
        clone._root = None
        return clone

    def _relative_path(self, frame: Any) -> str | None:
        """The path of ``frame`` relative to the anchor, or None if outside its scope."""
        if self._anchor is None:
            return frame.path
        if frame is self._anchor:
            return "/"
        walk = frame.parent
        while walk is not None and walk is not self._anchor:
            walk = walk.parent
        if walk is None:
            return None
        rel = frame.path[len(self._anchor.path) :]
        return rel if rel.startswith("/") else "/" + rel

    def _frame_path(self, action: str) -> str:
        frame = current_frame()
        if frame is None:
            raise CollectionScopeError(
                f"Collection.{action} should only be used inside a module's apply function: "
                "expected a running module, got none (top level). Consider using the value "
                "directly instead of storing it in a Collection.")
        path = self._relative_path(frame)
        if path is None:
            raise CollectionScopeError(
                f'Trying to {action} state outside the scope of this Collection: module '
                f'"{frame.label()}" is not inside "{self._anchor.label()}", where the Collection '
                "was made. Most likely due to passing around a shared Module; create the "
                "Collection at a common parent (or at top level).")
        return path

    def retrieve(self, default: Any = None) -> Any:
        """The value stored for the running module's path, or ``default``."""
        return self._state.get(self._frame_path("retrieve"), default)

    def store(self, value: Any) -> Any:
        """Stores ``value`` for the running module's path; returns the previous value.

        Raises:
          ImmutableStateError: outside ``mutate()`` / a mutable ``nn.stateful`` scope.
          StateTraceError: ``value`` comes from a JAX transformation started after
            ``mutate()`` (open the scope inside the transformed function).
          CollectionScopeError: called outside any module, by the module that created
            the Collection, by a module outside its scope, or by two different unnamed
            top-level module calls (which would overwrite each other's entries).
        """
        if not self._mutable:
            raise ImmutableStateError(current_path())
        if trace_state() != self._trace and _has_tracer(value):
            raise StateTraceError(current_path(), "state (nn.stateful/Collection.store)")
        path = self._frame_path("store")
        frame = current_frame()
        if self._anchor is not None and frame is self._anchor:
            raise CollectionScopeError(
                f'Module "{frame.label()}" stores into a Collection it created itself. State '
                "should be stored from within a (child) module; consider using the value "
                "directly instead of storing it in a Collection.")
        self._check_root(frame)
        previous = self._state.get(path)
        self._state[path] = value
        return previous

    def _check_root(self, frame: Any) -> None:
        root = frame
        while root.parent is not None and root.parent is not self._anchor:
            root = root.parent
        first = getattr(self, "_root", None)  # subclasses may build instances themselves
        if first is None:
            self._root = root
        elif first is not root and (first.name is None or root.name is None):
            raise CollectionScopeError(
                "When multiple top-level module calls use a Collection each top-level module "
                f'should have a name: expected one top-level call, got a second one '
                f'("{root.label()}" after "{first.label()}") storing into the same '
                "Collection, so their entries would overwrite each other. Pass `name=` to "
                "each top-level call (e.g. `A.init(rng, x, name='a')`), or use a separate "
                "`mutate()` scope for each.")


def _has_tracer(tree: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _flatten(c: Collection) -> tuple[list[Any], tuple[Any, ...]]:
    if c._mutable:
        raise FlaxenError(
            "A mutable Collection should not be passed through a JAX transformation. Pass "
            "the state in immutable, and open `nn.stateful(state)` inside the function."
        )
    keys = tuple(sorted(c._state))
    return [c._state[k] for k in keys], (type(c), keys, c._anchor)


def _flatten_with_keys(c: Collection) -> tuple[list[tuple[Any, Any]], tuple[Any, ...]]:
    # Key paths name each entry by its Collection key, so a BatchNorm mean under
    # {'state': collection} reads state/BatchNorm_1/mean (traverse_util.path_to_str).
    children, aux = _flatten(c)
    return [(jax.tree_util.DictKey(k), v) for k, v in zip(aux[1], children)], aux


def _unflatten(aux: tuple[Any, ...], children: Iterable[Any]) -> Any:
    cls, keys, anchor = aux
    c = cls.__new__(cls)
    c._state = dict(zip(keys, children))
    c._anchor = anchor
    c._mutable = False
    c._trace = None
    c._root = None
    return c


C = TypeVar("C", bound=Collection)


def register_collection(cls: type[C]) -> type[C]:
    """Registers a Collection subclass (such as an attention ``Cache``) as a pytree."""
    jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, _unflatten, _flatten)
    return cls


register_collection(Collection)


@contextlib.contextmanager
def stateful(state: Collection | None = None, mutable: bool = True) -> Iterator[Collection]:
    """Makes ``state`` the active state collection for modules run inside the block.

    Args:
      state: the current state, or None for a new empty one (use it around ``init``).
      mutable: if True (training), yields a mutable copy that holds the new state and
        stays readable after the block; if False (evaluation), writes raise an error.

    Yields:
      The collection modules read and write; with ``mutable=True`` this is the new state.
    """
    state = Collection() if state is None else state
    if not isinstance(state, Collection):
        raise FlaxenError(
            f"nn.stateful expects a Collection (as returned by init_with_state or a previous "
            f"nn.stateful block), got {type(state).__name__}."
        )
    if mutable:
        with state.mutate() as new_state, pushed(stacks.states, new_state):
            yield new_state
    else:
        with pushed(stacks.states, state):
            yield state


def is_stateful() -> bool:
    """Whether a state collection is active."""
    return bool(stacks.states)


def get_state() -> Collection:
    """The innermost active state collection; raises MissingStateError if none is."""
    if not stacks.states:
        raise MissingStateError(current_path())
    return stacks.states[-1]


class ModuleState:
    """A handle to one named state variable of one module (``Module.state`` returns it)."""

    def __init__(self, collection: Collection, name: str):
        self._collection = collection
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def collection(self) -> Collection:
        """The collection this variable lives in."""
        return self._collection

    @property
    def value(self) -> Any:
        values = self._collection.retrieve(default={})
        if self._name not in values:
            raise StateEntryMissingError(current_path(), f'the state variable "{self._name}"',
                                         list(self._collection.as_dict()))
        return values[self._name]

    @value.setter
    def value(self, v: Any) -> None:
        values = dict(self._collection.retrieve(default={}))
        values[self._name] = v
        self._collection.store(values)

    def exists(self) -> bool:
        return self._name in self._collection.retrieve(default={})


@contextlib.contextmanager
def capture_module_outputs() -> Iterator[Collection]:
    """Records every module's output, as a list per module path, while the block runs.

    Example: ``{'/': [y], '/Dense_0': [h]}``. A shared module run k times has k entries.
    """
    with Collection().mutate() as captured, pushed(stacks.captures, captured):
        yield captured


def record_output(frame: Any, output: Any) -> None:
    """Appends ``output`` to every active capture whose scope contains ``frame``."""
    for captured in stacks.captures:
        path = captured._relative_path(frame)
        if path is not None:
            captured._state.setdefault(path, []).append(output)
