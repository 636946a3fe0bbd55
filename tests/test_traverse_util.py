"""flaxen.traverse_util: flatten/unflatten and traversals (never mutating inputs)."""

import collections

import numpy as np
import pytest

from flaxen import struct, traverse_util
from flaxen.errors import FlaxenError
from flaxen.traverse_util import t_identity


@struct.dataclass
class Pair:
    a: object
    b: object


def test_flatten_unflatten_round_trip():
    xs = {"a": {"b": 1, "c": {"d": 2}}, "e": 3, "empty": {}}
    flat = traverse_util.flatten_dict(xs)
    assert flat == {("a", "b"): 1, ("a", "c", "d"): 2, ("e",): 3}
    assert traverse_util.unflatten_dict(flat) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    kept = traverse_util.flatten_dict(xs, keep_empty_nodes=True)
    assert kept[("empty",)] == {}
    assert traverse_util.unflatten_dict(kept) == xs
    joined = traverse_util.flatten_dict(xs, sep="/")
    assert joined == {"a/b": 1, "a/c/d": 2, "e": 3}
    assert traverse_util.unflatten_dict(joined, sep="/")["a"]["c"]["d"] == 2
    with pytest.raises(FlaxenError, match="expects a dict"):
        traverse_util.flatten_dict([1])
    with pytest.raises(FlaxenError, match="goes through the leaf"):
        traverse_util.unflatten_dict({("a",): 1, ("a", "b"): 2})


def test_traversals_update_by_copy():
    xs = {"a": [1, 2, (3, 4)], "b": Pair(a=5, b={"c": 6})}
    t = t_identity["a"][:2]
    assert list(t.iterate(xs)) == [1, 2]
    ys = t.update(lambda v: v * 10, xs)
    assert ys["a"] == [10, 20, (3, 4)] and xs["a"] == [1, 2, (3, 4)]
    assert t_identity["b"].a.update(lambda v: -v, xs)["b"] == Pair(a=-5, b={"c": 6})
    assert list(t_identity["b"].b.each().iterate(xs)) == [6]
    leaves = t_identity.tree().filter(lambda v: v % 2 == 0)
    assert list(leaves.iterate(xs)) == [2, 4, 6]
    merged = t_identity.merge(t_identity["a"][0], t_identity["b"].a)
    assert list(merged.iterate(xs)) == [1, 5]
    assert t_identity.each().set(["x", "y"], {"p": 1, "q": 2}) == {"p": "x", "q": "y"}
    NT = collections.namedtuple("NT", "u v")
    assert t_identity.each().update(str, NT(1, 2)) == NT("1", "2")
    assert t_identity.u.update(str, NT(1, 2)) == NT("1", 2)


def test_traversal_errors():
    with pytest.raises(FlaxenError, match="Not enough values"):
        t_identity.each().set([1], [0, 0])
    with pytest.raises(FlaxenError, match="Too many values"):
        t_identity.each().set([1, 2, 3], [0, 0])
    with pytest.raises(FlaxenError, match="Only the entries"):
        t_identity.each().update(str, 5)


def test_tree_update_on_arrays():
    params = {"w": np.ones(2), "b": np.zeros(1)}
    out = t_identity.tree().update(lambda x: x + 1, params)
    np.testing.assert_array_equal(out["w"], [2.0, 2.0])
    np.testing.assert_array_equal(params["w"], [1.0, 1.0])


def test_path_to_str_is_one_spelling_for_tuples_strings_and_key_entries():
    import jax

    from flaxen.traverse_util import path_to_str

    assert path_to_str(("params", "Conv_0", "kernel")) == "params/Conv_0/kernel"
    assert path_to_str("/Dense_0/kernel/") == "Dense_0/kernel"
    assert path_to_str(()) == ""
    tree = {"a": {"b": [1, 2]}}
    paths = [path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert paths == ["a/b/0", "a/b/1"]
