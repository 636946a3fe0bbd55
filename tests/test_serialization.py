"""flaxen.serialization: state dicts of every pytree type and the safe msgpack format."""

import collections
import struct as pystruct
import zlib

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import pytest

from flaxen import _byte_format, nn, optim, serialization, struct
from flaxen.errors import SerializationError

Point = collections.namedtuple("Point", ["x", "y"])


@struct.dataclass
class Hyper:
    w: jax.Array
    extra: dict
    name: str = struct.field(pytree_node=False, default="h")


class Dense(nn.Module):
    def apply(self, x, features=3):
        return nn.Dense(x, features=features)


class BN(nn.Module):
    def apply(self, x):
        h = self.state("mean", (x.shape[-1],), jax.nn.initializers.zeros)
        if not self.is_initializing():
            h.value = h.value + 1.0
        return x


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if hasattr(x, "dtype"):
            assert np.dtype(x.dtype) == np.dtype(y.dtype)
            assert np.shape(x) == np.shape(y)
            # Compare bit patterns: exact, and NaN-safe.
            np.testing.assert_array_equal(np.asarray(x).reshape(-1).view(np.uint8),
                                          np.asarray(y).reshape(-1).view(np.uint8))
        else:
            assert type(x) is type(y) and x == y


def _zeros_like(tree):
    return jax.tree.map(lambda x: np.zeros_like(x) if hasattr(x, "dtype") else x, tree)


def test_state_dict_of_containers():
    tree = {"a": [1, (2.0, None)], "b": Point(np.ones(2), "s"), 3: {}}
    state = serialization.to_state_dict(tree)
    assert state == {"a": {"0": 1, "1": {"0": 2.0, "1": None}},
                     "b": {"x": state["b"]["x"], "y": "s"}, "3": {}}
    back = serialization.from_state_dict(tree, state)
    assert isinstance(back["b"], Point) and isinstance(back["a"][1], tuple)
    assert 3 in back


def test_dataclass_state_dict_skips_static_fields():
    h = Hyper(w=jnp.ones(2), extra={"k": 1})
    assert set(serialization.to_state_dict(h)) == {"w", "extra"}
    back = serialization.from_bytes(h.replace(w=jnp.zeros(2), name="other"),
                                    serialization.to_bytes(h))
    np.testing.assert_array_equal(back.w, np.ones(2))
    assert back.name == "other"  # static fields come from the target


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int32", "int64", "float16",
                                   "float32", "float64", "complex64", "bfloat16"])
@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (2, 3)])
def test_array_round_trip(dtype, shape):
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    x = (np.arange(int(np.prod(shape))) % 5).astype(dt).reshape(shape)
    y = jnp.asarray(x)  # int64/float64/complex128 become 32-bit without jax_enable_x64
    back = serialization.msgpack_restore(serialization.msgpack_serialize({"np": x, "jax": y}))
    _assert_tree_equal({"np": x, "jax": np.asarray(y)}, back)


def test_scalars_and_special_values_round_trip():
    tree = {"f": 1.5, "i": -(2**62), "b": True, "n": None, "s": "é", "by": b"\x00\x01",
            "c": 1 + 2j, "np32": np.float32(3.5), "npi": np.int16(-7),
            "nan": np.array([np.nan, np.inf, -0.0], np.float32)}
    back = serialization.msgpack_restore(serialization.msgpack_serialize(tree))
    _assert_tree_equal(tree, back)


def test_bfloat16_bits_exact():
    bits = np.array([0x3F80, 0x7F80, 0xFF80, 0x7FC1, 0x0001], np.uint16)
    x = bits.view(ml_dtypes.bfloat16)
    back = serialization.msgpack_restore(serialization.msgpack_serialize(x))
    assert back.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(back.view(np.uint16), bits)


def test_model_and_collection_round_trip(rng):
    x = jnp.ones((2, 4))
    _, params = Dense.init(rng, x)
    model = nn.Model(Dense, params)
    state = serialization.to_state_dict(model)
    assert set(state) == {"params"} and set(state["params"]) == {"Dense_0"}
    back = serialization.from_bytes(_zeros_like(model), serialization.to_bytes(model))
    assert isinstance(back, nn.Model) and back.module is Dense
    _assert_tree_equal(model, back)
    np.testing.assert_array_equal(back(x), model(x))

    _, _, coll = BN.init_with_state(rng, x)
    _, coll = nn.Model(BN, {}).call_with_state(coll, x, _mutable=True)
    assert serialization.to_state_dict(coll) == {"/": {"mean": coll["/"]["mean"]}}
    back = serialization.from_bytes(_zeros_like(coll), serialization.to_bytes(coll))
    assert isinstance(back, nn.Collection)
    np.testing.assert_array_equal(back["/"]["mean"], np.ones(4))


def test_optimizer_round_trip_with_adam_state(rng):
    x = jnp.ones((2, 4))
    _, params = Dense.init(rng, x)
    opt = optim.Adam(learning_rate=0.1).create(nn.Model(Dense, params))
    # Distinct values in every leaf of the optax state (mu, nu, count) and the step.
    opt = jax.tree.map(lambda x: x + jnp.asarray(2, x.dtype), opt)
    state = serialization.to_state_dict(opt)
    assert set(state) == {"target", "state"}
    assert set(state["state"]) == {"step", "param_states"}
    fresh = optim.Adam(learning_rate=0.1).create(nn.Model(Dense, params))
    back = serialization.from_bytes(fresh, serialization.to_bytes(opt))
    _assert_tree_equal(opt, back)
    assert int(back.state.step) == 2
    assert type(back.state.param_states) is type(opt.state.param_states)


def test_nested_optimizer_in_dataclass(rng):
    _, params = Dense.init(rng, jnp.ones((1, 2)))
    inner = optim.Momentum(learning_rate=0.1, beta=0.9).create(params)
    inner = inner.apply_gradient(jax.tree.map(jnp.ones_like, params))
    outer = Hyper(w=jnp.arange(3.0), extra={"opts": [inner, inner]})
    back = serialization.from_bytes(_zeros_like(outer), serialization.to_bytes(outer))
    _assert_tree_equal(outer, back)


def test_register_custom_type():
    class Box:
        def __init__(self, v):
            self.v = v

    serialization.register_serialization_state(
        Box, lambda b: {"v": serialization.to_state_dict(b.v)},
        lambda b, s: Box(serialization.from_state_dict(b.v, s["v"], name="v")))
    back = serialization.from_bytes(Box(np.zeros(2)), serialization.to_bytes(Box(np.ones(2))))
    np.testing.assert_array_equal(back.v, np.ones(2))
    with pytest.raises(ValueError, match='"Box" is already registered'):
        serialization.register_serialization_state(Box, lambda b: {}, lambda b, s: b)
    serialization.register_serialization_state(Box, lambda b: {}, lambda b, s: b,
                                               override=True)


def test_structure_errors_name_the_path():
    data = serialization.to_bytes({"a": {"b": [1, 2]}})
    with pytest.raises(SerializationError, match=r'"a/b".*3 entries'):
        serialization.from_bytes({"a": {"b": [1, 2, 3]}}, data)
    with pytest.raises(SerializationError, match=r"Missing: \['c'\]"):
        serialization.from_bytes({"a": {"b": [1, 2]}, "c": 1}, data)
    with pytest.raises(SerializationError, match=r'"a".*expected a dict'):
        serialization.from_bytes({"a": Hyper(1, {})}, serialization.to_bytes({"a": 5}))


def test_unserializable_values_error():
    with pytest.raises(SerializationError, match="object"):
        serialization.msgpack_serialize({"x": np.array([object()])})
    with pytest.raises(SerializationError, match="str dict keys"):
        serialization.msgpack_serialize({1: 2})
    with pytest.raises(SerializationError, match="collide"):
        serialization.to_state_dict({1: 1, "1": 2})
    with pytest.raises(SerializationError, match="type set"):
        serialization.msgpack_serialize({"x": {1, 2}})


def test_large_arrays_are_chunked(monkeypatch):
    monkeypatch.setattr(_byte_format, "_MAX_CHUNK_BYTES", 64)
    x = np.arange(1000, dtype=np.float32).reshape(10, 100)
    data = serialization.msgpack_serialize({"x": x, "small": np.ones(3, np.float32)})
    raw = msgpack.unpackb(data, raw=False, ext_hook=lambda c, d: None)
    assert len(raw["tree"]["x"]["chunks"]) == 4000 // 64 + 1
    back = serialization.msgpack_restore(data)
    np.testing.assert_array_equal(back["x"], x)


@pytest.mark.slow
def test_few_hundred_mb_array(monkeypatch):
    monkeypatch.setattr(_byte_format, "_MAX_CHUNK_BYTES", 2**27)
    x = np.ones((300 * 2**20 // 4,), np.float32)
    back = serialization.msgpack_restore(serialization.msgpack_serialize(x))
    assert back.shape == x.shape and back[-1] == 1.0


def test_format_version_is_written_and_checked():
    data = serialization.msgpack_serialize({"a": 1})
    envelope = msgpack.unpackb(data)
    assert envelope["__flaxen_format__"] == serialization.FORMAT_VERSION
    assert envelope["tree"] == {"a": 1}
    assert envelope["crc32"] == zlib.crc32(data[:-4]).to_bytes(4, "big") == data[-4:]
    assert b"".join(serialization.msgpack_serialize_parts({"a": 1})) == data
    newer = bytearray(data)
    newer[19] = serialization.FORMAT_VERSION + 1  # the version (a positive fixint)
    newer[-4:] = zlib.crc32(bytes(newer[:-4])).to_bytes(4, "big")
    with pytest.raises(SerializationError, match="Upgrade flaxen"):
        serialization.msgpack_restore(bytes(newer))
    # Plain msgpack without the envelope (as the pre-release wrote) still reads.
    assert serialization.msgpack_restore(msgpack.packb({"a": 1})) == {"a": 1}


def _ext_array(shape, dtype, data):
    return msgpack.ExtType(1, msgpack.packb([shape, dtype, data]))


@pytest.mark.parametrize("payload,match", [
    (b"", "truncated"),
    (b"\xc1", "valid"),  # a reserved msgpack byte
    (msgpack.packb({"__flaxen_format__": 1, "tree": 1}), "header"),
    (msgpack.packb({"__flaxen_format__": 1, "tree": 1, "crc32": b"abcd"}), "checksum"),
    (msgpack.packb({"tree": 1, "__flaxen_format__": 1}), "header"),
    (msgpack.packb(_ext_array([2**40, 2**40], "float32", b"")), "absurdly large"),
    (msgpack.packb(_ext_array([2**20, 2**20], "float32", b"")), "needs"),
    (msgpack.packb(_ext_array([3], "float32", b"\x00" * 11)), "needs 12 bytes"),
    (msgpack.packb(_ext_array([-1], "float32", b"")), "non-negative"),
    (msgpack.packb(_ext_array([1], "object", b"\x00" * 8)), "dtype 'object'"),
    (msgpack.packb(_ext_array([1], "O", b"\x00" * 8)), "dtype 'O'"),
    (msgpack.packb(msgpack.ExtType(1, b"\x93")), "array record"),
    (msgpack.packb(msgpack.ExtType(1, msgpack.packb([[2], "int8", 5]))), "array record"),
    (msgpack.packb(msgpack.ExtType(1, msgpack.packb([[2], "int8", b"ab"]) + b"x")), "length"),
    (msgpack.packb(msgpack.ExtType(9, b"")), "ext type 9"),
    (msgpack.packb(msgpack.ExtType(2, msgpack.packb(["a", 1]))), "complex"),
    (b"\x91" * 300 + b"\x00", "deeper than 200"),
    (b"\x91" * 5000 + b"\x00", "deeper than 200"),
    (b"\xdd\xff\xff\xff\xff", "declares 4294967295 entries"),  # a 4-billion-entry array
    (b"\xc6\xff\xff\xff\xff", "truncated"),  # declares a 4 GiB bin
    (msgpack.packb({"__flaxen_chunked_array__": [[4], "float32"], "chunks": [1]}),
     "chunked"),
])
def test_hostile_data_gives_clear_errors(payload, match):
    with pytest.raises(SerializationError, match=match):
        serialization.msgpack_restore(payload)


def test_pickle_is_never_loaded(tmp_path):
    import pickle

    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(SerializationError):
        serialization.msgpack_restore(pickle.dumps(Evil()))
    with pytest.raises(SerializationError):
        serialization.msgpack_restore(msgpack.packb(_ext_array([1], "|O", pickle.dumps(1))))
    assert not marker.exists()


def test_truncations_of_a_real_file_all_fail_cleanly():
    data = serialization.to_bytes({"w": np.arange(6.0).reshape(2, 3), "b": [1, "x"]})
    for n in range(len(data)):
        with pytest.raises(SerializationError):
            serialization.msgpack_restore(data[:n])


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    try:
        serialization.msgpack_restore(data)
    except SerializationError:
        pass


_leaf = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(), st.booleans(), st.none(),
                  st.text(max_size=5), st.binary(max_size=20))
_trees = st.recursive(_leaf, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=4), c, max_size=4)),
    max_leaves=20)


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(_trees, st.data())
def test_fuzz_mutated_valid_files(tree, data):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    parts = serialization.msgpack_serialize_parts({"t": tree, "a": arr})
    # Round trip of the clean file first.
    back = serialization.msgpack_restore(b"".join(parts))
    np.testing.assert_array_equal(back["a"], arr)
    # Then damage it: with the checksum, any change is refused. The body alone (a plain
    # msgpack tree, read like a pre-release file without a checksum) goes to the decoder
    # itself: every outcome is a value or a SerializationError, nothing else.
    for blob, checked in ((bytearray(b"".join(parts)), True), (bytearray(parts[1]), False)):
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(blob)))
        try:
            out = serialization.msgpack_restore(bytes(blob[:cut]))
        except SerializationError:
            continue
        if checked:  # never the tree with wrong values (other bytes may decode as plain
            # msgpack, e.g. one byte 0x00, which then fits no target)
            assert not (isinstance(out, dict) and "a" in out) or np.array_equal(out["a"], arr)


def test_numpy_scalar_record_checks_size():
    bad = msgpack.packb(msgpack.ExtType(3, msgpack.packb(["float64", pystruct.pack("<f", 1)])))
    with pytest.raises(SerializationError, match="needs 8 bytes"):
        serialization.msgpack_restore(bad)


def test_typed_prng_keys_round_trip_as_key_data():
    keys = {"one": jax.random.key(3), "many": jax.random.split(jax.random.key(1), 4),
            "raw": jax.random.PRNGKey(2)}
    template = {"one": jax.random.key(0), "many": jax.random.split(jax.random.key(0), 4),
                "raw": jax.random.PRNGKey(0)}
    stored = serialization.msgpack_restore(serialization.to_bytes(keys))
    assert stored["many"].shape == (4, 2) and stored["many"].dtype == np.uint32
    back = serialization.from_bytes(template, serialization.to_bytes(keys))
    assert jax.dtypes.issubdtype(back["one"].dtype, jax.dtypes.prng_key)
    for k in ("one", "many"):
        np.testing.assert_array_equal(jax.random.key_data(back[k]), jax.random.key_data(keys[k]))
    np.testing.assert_array_equal(back["raw"], keys["raw"])
    # The restored key draws the same numbers as the saved one.
    np.testing.assert_array_equal(jax.random.normal(back["one"], (3,)),
                                  jax.random.normal(keys["one"], (3,)))


def test_checksum_catches_silent_corruption_of_array_data():
    data = serialization.to_bytes({"w": np.arange(64, dtype=np.float32)})
    for i in (len(data) // 2, len(data) - 5, 20):
        flipped = bytearray(data)
        flipped[i] ^= 0x04  # one bit: the msgpack structure stays valid
        with pytest.raises(SerializationError, match="checksum mismatch"):
            serialization.msgpack_restore(bytes(flipped))
    # Without the checksum the reader would have returned wrong values silently.
    tree = msgpack.unpackb(data, ext_hook=msgpack.ExtType)["tree"]
    legacy = bytearray(msgpack.packb(tree))
    legacy[len(legacy) // 2] ^= 0x04
    wrong = serialization.msgpack_restore(bytes(legacy))["w"]
    assert not np.array_equal(wrong, np.arange(64, dtype=np.float32))


def test_big_endian_arrays_are_written_native():
    x = np.arange(5, dtype=">f4")
    back = serialization.msgpack_restore(serialization.msgpack_serialize({"x": x, "s": x[1]}))
    assert back["x"].dtype == np.dtype("float32") and back["x"].dtype.isnative
    np.testing.assert_array_equal(back["x"], np.arange(5, dtype=np.float32))
    assert back["s"] == np.float32(1)


def test_reads_plain_msgpack_written_like_the_pre_release():
    # The pre-release wrote msgpack.packb(state_dict) with arrays as ext 1 of
    # packb((shape, dtype name, bytes)) and complex numbers as ext 2; no envelope.
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    ext = msgpack.ExtType(1, msgpack.packb((w.shape, w.dtype.name, w.tobytes())))
    cplx = msgpack.ExtType(2, msgpack.packb((1.0, -2.0)))
    data = msgpack.packb({"params": {"w": ext}, "c": cplx, "step": 3})
    back = serialization.from_bytes({"params": {"w": np.zeros((2, 3), np.float32)},
                                     "c": 0j, "step": 0}, data)
    np.testing.assert_array_equal(back["params"]["w"], w)
    assert back["c"] == 1 - 2j and back["step"] == 3


# -- Issue #14: memory bound, absurd chunked shapes, header damage ----------------------


def _one_byte_arrays_file(nbytes):
    one = msgpack.ExtType(1, msgpack.packb([[1], "uint8", b"\x07"]))
    count = nbytes // len(msgpack.packb(one))
    return msgpack.packb({"a": [one] * count}), count


def test_memory_of_a_file_of_tiny_arrays_is_bounded():
    # Defect 4: 16 MiB of one-byte arrays took +530 MiB. Now decoding builds at most
    # DECODE_OVERHEAD_FACTOR * size + DECODE_OVERHEAD_FLOOR bytes, or refuses the file.
    import tracemalloc

    data, _ = _one_byte_arrays_file(4 * 2**20)
    bound = (serialization.DECODE_OVERHEAD_FACTOR * len(data)
             + serialization.DECODE_OVERHEAD_FLOOR)
    tracemalloc.start()
    try:
        with pytest.raises(SerializationError, match="MiB of memory"):
            serialization.msgpack_restore(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < bound + len(data), (peak, bound)


def test_memory_bound_admits_real_files_and_is_overridable(monkeypatch):
    small, count = _one_byte_arrays_file(2**16)  # 64 KiB: within the floor
    assert len(serialization.msgpack_restore(small)["a"]) == count
    data, count = _one_byte_arrays_file(4 * 2**20)
    monkeypatch.setattr(serialization, "DECODE_OVERHEAD_FACTOR", 40)
    assert len(serialization.msgpack_restore(data)["a"]) == count


def test_one_entry_maps_are_bounded_too():
    data = msgpack.packb([{"k": None}] * (2**20))  # 4 bytes per map
    with pytest.raises(SerializationError, match="MiB of memory"):
        serialization.msgpack_restore(data)


@pytest.mark.parametrize("record", [
    {"__flaxen_chunked_array__": [[2**40, 0, 2**40], "float32"], "chunks": []},
    {"__msgpack_chunked_array__": True, "shape": {"0": 2**40, "1": 0, "2": 2**40},
     "chunks": {"0": np.zeros(0, np.float32)}},
])
def test_zero_size_huge_chunked_shape_is_a_serialization_error(tmp_path, record):
    # Defect 5: a plain ValueError from numpy escaped every loader.
    from flaxen.training import checkpoints

    path = tmp_path / "checkpoint_1"
    path.write_bytes(serialization.msgpack_serialize({"x": record}))
    with pytest.raises(SerializationError, match=r"checkpoint_1.*absurdly large"):
        checkpoints.restore_checkpoint(tmp_path, None)
    ext = msgpack.packb(_ext_array([2**40, 0, 2**40], "float32", b""))
    with pytest.raises(SerializationError, match="absurdly large"):
        serialization.msgpack_restore(ext)


def test_every_bit_flip_in_header_and_trailer_is_reported_as_damage(tmp_path):
    # Defect 6: 119 of the 152 bits of the first 19 bytes turned the checksum off.
    from flaxen.errors import CheckpointMismatchError
    from flaxen.training import checkpoints

    tree = {"w": np.arange(8, dtype=np.float32), "step": 3}
    data = serialization.to_bytes(tree)
    positions = list(range(20)) + list(range(len(data) - 12, len(data)))
    path = tmp_path / "checkpoint_3"
    for i in positions:
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(SerializationError, match="Damaged data"):
                serialization.msgpack_restore(bytes(damaged))
            if bit == 0:
                path.write_bytes(bytes(damaged))
                try:
                    checkpoints.restore_checkpoint(tmp_path, _zeros_like(tree))
                except CheckpointMismatchError:
                    pytest.fail(f"byte {i}: damage reported as a structure mismatch")
                except SerializationError as e:
                    assert "checkpoint_3" in str(e)
                else:
                    pytest.fail(f"byte {i}: damaged file restored")


# -- Flax's encodings -------------------------------------------------------------------


def test_numpy_scalars_read_in_both_encodings_and_written_as_flax_reads_them():
    from flax import serialization as flax_ser

    old = msgpack.packb({"s": msgpack.ExtType(3, msgpack.packb(
        ["float32", np.float32(2.5).tobytes()]))})  # flaxen <= 0.1
    assert serialization.msgpack_restore(old)["s"] == np.float32(2.5)
    flax_bytes = flax_ser.msgpack_serialize({"s": np.int16(-4), "f": np.float32(0.5)})
    back = serialization.msgpack_restore(flax_bytes)
    assert back["s"] == np.int16(-4) and back["s"].dtype == np.int16
    assert back["f"] == np.float32(0.5) and back["f"].dtype == np.float32
    ours = serialization.msgpack_serialize({"s": np.int16(-4)}, format="flax")
    assert flax_ser.msgpack_restore(ours)["s"] == np.int16(-4)
    # Flax reads the scalar inside a flaxen file's tree as well.
    tree = msgpack.unpackb(serialization.msgpack_serialize({"s": np.int16(-4)}),
                           ext_hook=lambda c, d: flax_ser._msgpack_ext_unpack(c, d))["tree"]
    assert tree["s"] == np.int16(-4)


def test_flax_chunked_arrays_are_read_as_arrays(monkeypatch):
    from flax import serialization as flax_ser

    monkeypatch.setattr(flax_ser, "MAX_CHUNK_SIZE", 64)
    x = np.arange(100, dtype=np.float32).reshape(4, 25)
    data = flax_ser.msgpack_serialize({"x": x, "small": np.ones(2, np.float32)})
    back = serialization.msgpack_restore(data)
    assert isinstance(back["x"], np.ndarray)
    np.testing.assert_array_equal(back["x"], x)
    # And flaxen's format="flax" writes chunks that Flax joins.
    monkeypatch.setattr(_byte_format, "_MAX_CHUNK_BYTES", 64)
    ours = serialization.msgpack_serialize({"x": x}, format="flax")
    np.testing.assert_array_equal(flax_ser.msgpack_restore(ours)["x"], x)
    np.testing.assert_array_equal(serialization.msgpack_restore(ours)["x"], x)


def test_to_bytes_format_flax_round_trips_through_flax(rng):
    from flax import serialization as flax_ser

    _, params = Dense.init(rng, jnp.ones((2, 4)))
    opt = optim.Adam(learning_rate=0.1).create(nn.Model(Dense, params))
    data = serialization.to_bytes(opt, format="flax")
    state = flax_ser.msgpack_restore(data)  # no envelope: Flax reads it directly
    assert set(state) == {"target", "state"}
    np.testing.assert_array_equal(state["target"]["params"]["Dense_0"]["kernel"],
                                  params["Dense_0"]["kernel"])
    # Files written by Flax restore in flaxen.
    back = serialization.from_bytes(_zeros_like(opt), flax_ser.to_bytes(
        serialization.to_state_dict(opt)))
    _assert_tree_equal(opt, back)
    with pytest.raises(SerializationError, match="format must be"):
        serialization.to_bytes(opt, format="orbax")


def test_reads_dtype_type_strings_of_the_pre_release():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = msgpack.packb({"w": msgpack.ExtType(1, msgpack.packb((w.shape, "<f4", w.tobytes()))),
                          "b": msgpack.ExtType(1, msgpack.packb(((2,), ">i4", b"\0\0\0\1" * 2)))})
    back = serialization.msgpack_restore(data)
    np.testing.assert_array_equal(back["w"], w)
    assert back["b"].dtype == np.int32 and back["b"].dtype.isnative
    np.testing.assert_array_equal(back["b"], [1, 1])
