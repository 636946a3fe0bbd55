"""Flattening nested dicts, and traversals: select parts of a pytree, update them by copy.

``flatten_dict({'a': {'b': 1}}) == {('a', 'b'): 1}`` and ``unflatten_dict`` inverts it.

A ``Traversal`` names a selection of a structure (``t_identity['params'].each()``);
``iterate(x)`` yields the selected values and ``update(fn, x)`` returns a copy of ``x`` with
``fn`` applied to them. Inputs are never mutated.

Example:
    >>> t = t_identity['a'].each()
    >>> t.update(lambda v: v * 10, {'a': [1, 2], 'b': 3})
    {'a': [10, 20], 'b': 3}
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax

from flaxen.errors import FlaxenError


def path_to_str(path: str | Iterable[Any]) -> str:
    """The one spelling of a parameter path: keys joined by ``/`` with no leading slash.

    Every place flaxen prints or stores a path (errors, summaries, optimizer and checkpoint
    messages, golden files) uses this, so ``('params', 'Conv_0', 'kernel')`` always reads
    ``params/Conv_0/kernel``.

    Args:
      path: a tuple of keys (str, int, or ``jax.tree_util`` key entries such as ``DictKey``,
        ``GetAttrKey``, ``SequenceKey``), or an already joined string (returned stripped of
        leading and trailing slashes). A key that is itself a slash path, such as the
        ``'/BatchNorm_1'`` keys of an ``nn.Collection``, is stripped of its outer slashes,
        so ``('state', '/BatchNorm_1', 'mean')`` reads ``state/BatchNorm_1/mean``.

    Returns:
      The keys joined by ``/``; the empty string for the empty path (callers print it
      as ``<root>``).

    Example:
        >>> path_to_str(('params', 'Dense_0', 'kernel'))
        'params/Dense_0/kernel'
    """
    if isinstance(path, str):
        return path.strip("/")
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
            if hasattr(key, attr) and not isinstance(key, (str, int)):
                key = getattr(key, attr)
                break
        parts.append(str(key).strip("/"))
    return "/".join(p for p in parts if p != "")


def flatten_dict(xs: dict[Any, Any], keep_empty_nodes: bool = False,
                 sep: str | None = None) -> dict[Any, Any]:
    """Flattens a nested dict into ``{path: leaf}``.

    Args:
      xs: a nested dict.
      keep_empty_nodes: keep empty sub-dicts as ``{}`` leaves (dropped by default, as in
        the pre-release).
      sep: if given, paths are strings joined by ``sep`` instead of tuples.

    Returns:
      A flat dict keyed by tuples of keys (or ``sep``-joined strings).
    """
    if not isinstance(xs, dict):
        raise FlaxenError(f"flatten_dict expects a dict, got {type(xs).__name__}.")
    out: dict[Any, Any] = {}

    def walk(node: dict[Any, Any], prefix: tuple[Any, ...]) -> None:
        for k, v in node.items():
            path = (*prefix, k)
            if isinstance(v, dict) and v:
                walk(v, path)
            elif isinstance(v, dict) and not keep_empty_nodes:
                continue
            else:
                out[sep.join(map(str, path)) if sep is not None else path] = v

    walk(xs, ())
    return out


def unflatten_dict(xs: dict[Any, Any], sep: str | None = None) -> dict[Any, Any]:
    """Inverts ``flatten_dict``: ``{('a', 'b'): 1}`` (or ``{'a/b': 1}`` with sep) -> nested."""
    if not isinstance(xs, dict):
        raise FlaxenError(f"unflatten_dict expects a dict, got {type(xs).__name__}.")
    root: dict[Any, Any] = {}
    for path, value in xs.items():
        keys = tuple(path.split(sep)) if sep is not None else tuple(path)
        if not keys:
            raise FlaxenError("unflatten_dict: an empty path cannot be placed.")
        node = root
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise FlaxenError(f"unflatten_dict: the path {path!r} goes through the leaf at "
                                  f"{k!r}.")
            node = child
        node[keys[-1]] = value
    return root


class Traversal(abc.ABC):
    """A selection inside a structure; subclasses implement ``update`` and ``iterate``."""

    @abc.abstractmethod
    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        """A copy of ``inputs`` with ``fn`` applied to every selected value."""

    @abc.abstractmethod
    def iterate(self, inputs: Any) -> Iterator[Any]:
        """Yields the selected values in order."""

    def set(self, values: list[Any], inputs: Any) -> Any:
        """A copy of ``inputs`` whose selected values are replaced by ``values``, in order."""
        values = list(values)
        it = iter(values)
        count = [0]

        def take(_: Any) -> Any:
            count[0] += 1
            try:
                return next(it)
            except StopIteration:
                raise FlaxenError(
                    f"Not enough values provided: {len(values)} for a traversal that selects "
                    "more.") from None

        out = self.update(take, inputs)
        if count[0] != len(values):
            raise FlaxenError(f"Too many values provided: {len(values)} for {count[0]} "
                              "selected entries.")
        return out

    def compose(self, other: Traversal) -> Traversal:
        """The traversal that applies ``other`` inside what ``self`` selects."""
        return TraverseCompose(self, other)

    def merge(self, *traversals: Traversal) -> Traversal:
        """Selects what ``self`` and each of ``traversals`` select, one after the other."""
        return self.compose(TraverseMerge(*traversals))

    def each(self) -> Traversal:
        """Selects every entry of the selected lists, tuples or dicts."""
        return self.compose(TraverseEach())

    def tree(self) -> Traversal:
        """Selects every pytree leaf of the selected values."""
        return self.compose(TraverseTree())

    def filter(self, fn: Callable[[Any], bool]) -> Traversal:
        """Keeps only the selected values for which ``fn(value)`` is true."""
        return self.compose(TraverseFilter(fn))

    def __getattr__(self, attr: str) -> Traversal:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self.compose(TraverseAttr(attr))

    def __getitem__(self, key: Any) -> Traversal:
        return self.compose(TraverseItem(key))


class TraverseId(Traversal):
    """Selects its input itself."""

    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        return fn(inputs)

    def iterate(self, inputs: Any) -> Iterator[Any]:
        yield inputs


t_identity = TraverseId()


class TraverseMerge(Traversal):
    """Selects, in turn, what each of several traversals selects."""

    def __init__(self, *traversals: Traversal):
        self.traversals = traversals

    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        for t in self.traversals:
            inputs = t.update(fn, inputs)
        return inputs

    def iterate(self, inputs: Any) -> Iterator[Any]:
        for t in self.traversals:
            yield from t.iterate(inputs)


class TraverseCompose(Traversal):
    """``y`` inside ``x``: applies the second traversal to what the first selects."""

    def __init__(self, x: Traversal, y: Traversal):
        self.x, self.y = x, y

    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        return self.x.update(lambda v: self.y.update(fn, v), inputs)

    def iterate(self, inputs: Any) -> Iterator[Any]:
        for v in self.x.iterate(inputs):
            yield from self.y.iterate(v)


class TraverseFilter(Traversal):
    """Selects its input only if ``fn(input)`` is true."""

    def __init__(self, fn: Callable[[Any], bool]):
        self.fn = fn

    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        return fn(inputs) if self.fn(inputs) else inputs

    def iterate(self, inputs: Any) -> Iterator[Any]:
        if self.fn(inputs):
            yield inputs


def _copy_with(inputs: Any, attr: str, value: Any) -> Any:
    if dataclasses.is_dataclass(inputs) and not isinstance(inputs, type):
        return dataclasses.replace(inputs, **{attr: value})
    if hasattr(inputs, "_replace"):
        return inputs._replace(**{attr: value})
    out = copy.copy(inputs)
    setattr(out, attr, value)
    return out


class TraverseAttr(Traversal):
    """Selects the attribute ``attr`` (updates via ``dataclasses.replace``/``_replace``)."""

    def __init__(self, attr: str):
        self.attr = attr

    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        return _copy_with(inputs, self.attr, fn(getattr(inputs, self.attr)))

    def iterate(self, inputs: Any) -> Iterator[Any]:
        yield getattr(inputs, self.attr)


class TraverseItem(Traversal):
    """Selects ``inputs[key]``; a slice of a list or tuple selects each entry in it."""

    def __init__(self, key: Any):
        self.key = key

    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        if isinstance(inputs, tuple | list):
            items = list(inputs)
            if isinstance(self.key, slice):
                for i in range(*self.key.indices(len(items))):
                    items[i] = fn(items[i])
            else:
                items[self.key] = fn(items[self.key])
            return _rebuild(inputs, items)
        out = copy.copy(inputs)
        out[self.key] = fn(inputs[self.key])
        return out

    def iterate(self, inputs: Any) -> Iterator[Any]:
        if isinstance(self.key, slice) and isinstance(inputs, tuple | list):
            yield from inputs[self.key]
        else:
            yield inputs[self.key]


def _rebuild(inputs: tuple[Any, ...] | list[Any], items: list[Any]) -> Any:
    if isinstance(inputs, list):
        return items
    if hasattr(inputs, "_fields"):
        return type(inputs)(*items)
    return type(inputs)(items)


class TraverseEach(Traversal):
    """Selects every entry of a list, tuple or dict."""

    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        if isinstance(inputs, dict):
            return type(inputs)((k, fn(v)) for k, v in inputs.items())
        if not isinstance(inputs, list | tuple):
            raise FlaxenError("Only the entries of a list or tuple can be traversed; got "
                              f"{type(inputs).__name__}.")
        return _rebuild(inputs, [fn(v) for v in inputs])

    def iterate(self, inputs: Any) -> Iterator[Any]:
        yield from inputs.values() if isinstance(inputs, dict) else inputs


class TraverseTree(Traversal):
    """Selects every leaf of a pytree."""

    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        return jax.tree.map(fn, inputs)

    def iterate(self, inputs: Any) -> Iterator[Any]:
        yield from jax.tree.leaves(inputs)


def _entry_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def param_paths(tree: Any) -> list[tuple[str, Any]]:
    """``[(path, leaf)]`` in the pre-release ``ModelParamTraversal`` spelling.

    The pre-release filter received ``'/Dense_0/kernel'`` (keys joined by ``/`` with a
    leading slash, relative to an ``nn.Model``'s params), and filters written for it test
    that string, so it is kept here; everything flaxen *prints* uses ``path_to_str``.
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


def set_leaves(tree: Any, new: dict[str, Any]) -> Any:
    """``tree`` with the leaves at the given ``param_paths`` replaced (others untouched)."""
    treedef = jax.tree.structure(tree)
    leaves = [new.get(p, v) for p, v in param_paths(tree)]
    return jax.tree.unflatten(treedef, leaves)


class ModelParamTraversal(Traversal):
    """Selects the leaves of an ``nn.Model`` (or any pytree) whose path passes ``filter_fn``.

    Args:
        filter_fn: ``filter_fn(path: str, value) -> bool``; ``path`` is the pre-release
            spelling (see ``param_paths``): ``'/Dense_0/kernel'`` for Model params,
            ``'/encoder/w'`` for a dict.

    ``select(tree)`` gives ``{path: leaf}`` of the selected leaves (sorted by path);
    ``iterate`` and ``update`` are the ``Traversal`` protocol over the same leaves.
    """

    def __init__(self, filter_fn: Callable[[str, Any], bool]):
        self.filter_fn = filter_fn

    def __hash__(self) -> int:  # a static part of an optimizer definition: jit's cache key
        return hash((ModelParamTraversal, self.filter_fn))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelParamTraversal) and self.filter_fn == other.filter_fn

    def select(self, tree: Any) -> dict[str, Any]:
        """``{path: leaf}`` of the selected leaves, sorted by path."""
        return {p: v for p, v in sorted(param_paths(tree), key=lambda pv: pv[0])
                if self.filter_fn(p, v)}

    def iterate(self, inputs: Any) -> Iterator[Any]:
        """The selected leaves, sorted by path."""
        yield from self.select(inputs).values()

    def update(self, fn: Callable[[Any], Any], inputs: Any) -> Any:
        """A copy of ``inputs`` with ``fn`` applied to the selected leaves."""
        return set_leaves(inputs, {p: fn(v) for p, v in self.select(inputs).items()})
