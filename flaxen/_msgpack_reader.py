"""A msgpack decoder for untrusted files whose memory use is bounded by the input size.

``msgpack.unpackb`` builds every object a file describes; a hostile file of tiny records
(one-byte arrays, one-entry maps) makes it allocate 30x its own size or more. This decoder
walks the bytes itself, charges every object it builds an estimate of its Python size
against a budget, and stops with ``SerializationError`` once the budget is spent. Array
records are decoded by ``ext_hook`` (in ``flaxen.serialization``) and keep viewing the
input buffer, so their data is never copied.

Only what a state dict needs is decoded: nil, bool, int, float, str, bin, arrays, maps
with str keys (a key twice is refused), and ext records.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from flaxen.errors import SerializationError

# Estimated Python sizes in bytes (CPython 3.11, 64-bit), rounded up.
COST_SCALAR = 32
COST_STR = 56
COST_LIST = 64
COST_LIST_ITEM = 8
COST_DICT = 80
COST_DICT_ITEM = 48

_FLOAT32 = struct.Struct(">f")
_FLOAT64 = struct.Struct(">d")
_INTS = {0xCC: (1, False), 0xCD: (2, False), 0xCE: (4, False), 0xCF: (8, False),
         0xD0: (1, True), 0xD1: (2, True), 0xD2: (4, True), 0xD3: (8, True)}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_SIZED = {  # type byte -> (kind, bytes in the length field)
    0xC4: ("bin", 1), 0xC5: ("bin", 2), 0xC6: ("bin", 4),
    0xC7: ("ext", 1), 0xC8: ("ext", 2), 0xC9: ("ext", 4),
    0xD9: ("str", 1), 0xDA: ("str", 2), 0xDB: ("str", 4),
    0xDC: ("list", 2), 0xDD: ("list", 4), 0xDE: ("map", 2), 0xDF: ("map", 4),
}

ExtHook = Callable[[int, memoryview, "Budget"], Any]
MapHook = Callable[[dict[str, Any], "Budget"], Any]


class Budget:
    """Bytes of Python objects a decode may still build; shared by nested decodes."""

    def __init__(self, limit: int):
        self.limit = limit
        self.left = limit

    def charge(self, nbytes: int) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise SerializationError(
                f"Damaged or hostile data: decoding it would take more than "
                f"{self.limit / 2**20:.0f} MiB of memory besides the file itself (too many "
                "small objects for its size). If this is a real file, raise "
                "`flaxen.serialization.DECODE_OVERHEAD_FACTOR` (default 4) or "
                "`DECODE_OVERHEAD_FLOOR`.")


class Reader:
    """Decodes one msgpack object from ``buf``; ``read()`` then ``at_end()``."""

    def __init__(self, buf: memoryview, budget: Budget, ext_hook: ExtHook,
                 map_hook: MapHook | None = None, max_depth: int = 200):
        self.buf = buf
        self.pos = 0
        self.budget = budget
        self.ext_hook = ext_hook
        self.map_hook = map_hook
        self.max_depth = max_depth

    def at_end(self) -> bool:
        return self.pos == len(self.buf)

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise SerializationError(
                "Damaged data: the bytes end in the middle of a value (the file is truncated "
                "or not a checkpoint).")
        view = self.buf[self.pos:end]
        self.pos = end
        return view

    def _uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def read(self, depth: int = 0) -> Any:
        """The next object. Raises ``SerializationError`` for anything malformed."""
        if depth > self.max_depth:
            raise SerializationError(
                f"Damaged or hostile data: nested deeper than {self.max_depth} levels.")
        b = self.take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self._map(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self._list(b & 0x0F, depth)
        if 0xA0 <= b <= 0xBF:
            return self._str(b & 0x1F)
        if b in (0xC0, 0xC2, 0xC3):
            return None if b == 0xC0 else b == 0xC3
        if b in _INTS:
            n, signed = _INTS[b]
            self.budget.charge(COST_SCALAR)
            return int.from_bytes(self.take(n), "big", signed=signed)
        if b == 0xCA:
            self.budget.charge(COST_SCALAR)
            return _FLOAT32.unpack(self.take(4))[0]
        if b == 0xCB:
            self.budget.charge(COST_SCALAR)
            return _FLOAT64.unpack(self.take(8))[0]
        if b in _FIXEXT:
            code = self.take(1)[0]
            return self._ext(code, _FIXEXT[b])
        if b in _SIZED:
            kind, width = _SIZED[b]
            n = self._uint(width)
            if kind == "bin":
                view = self.take(n)
                self.budget.charge(COST_STR + n)
                return bytes(view)
            if kind == "str":
                return self._str(n)
            if kind == "list":
                return self._list(n, depth)
            if kind == "map":
                return self._map(n, depth)
            code = self.take(1)[0]
            return self._ext(code, n)
        raise SerializationError(
            f"Damaged data: byte 0x{b:02x} at offset {self.pos - 1} is not a valid msgpack "
            "type (the file may be truncated or not a checkpoint).")

    def _ext(self, code: int, n: int) -> Any:
        signed = code - 0x100 if code >= 0x80 else code
        return self.ext_hook(signed, self.take(n), self.budget)

    def _str(self, n: int) -> str:
        view = self.take(n)
        self.budget.charge(COST_STR + n)
        try:
            return str(view, "utf-8")
        except UnicodeDecodeError as e:
            raise SerializationError("Damaged data: a string is not valid UTF-8.") from e

    def _check_count(self, n: int) -> None:
        # Every entry takes at least one byte: a header cannot claim more than is left.
        if n > len(self.buf) - self.pos:
            raise SerializationError(
                f"Damaged data: a container declares {n} entries but only "
                f"{len(self.buf) - self.pos} bytes follow.")

    def _list(self, n: int, depth: int) -> list[Any]:
        self._check_count(n)
        self.budget.charge(COST_LIST + COST_LIST_ITEM * n)
        return [self.read(depth + 1) for _ in range(n)]

    def _map(self, n: int, depth: int) -> Any:
        self._check_count(n)
        self.budget.charge(COST_DICT + COST_DICT_ITEM * n)
        out: dict[str, Any] = {}
        for _ in range(n):
            key = self.read(depth + 1)
            if not isinstance(key, str):
                raise SerializationError(
                    f"Damaged data: a map key is {type(key).__name__}, expected str.")
            if key in out:
                raise SerializationError(f"Damaged data: the key {key[:40]!r} appears twice "
                                         "in one map.")
            out[key] = self.read(depth + 1)
        return self.map_hook(out, self.budget) if self.map_hook is not None else out


def decode(buf: memoryview, budget: Budget, ext_hook: ExtHook,
           map_hook: MapHook | None = None, max_depth: int = 200) -> Any:
    """Decodes ``buf``, which must hold exactly one msgpack object."""
    reader = Reader(buf, budget, ext_hook, map_hook, max_depth)
    value = reader.read()
    if not reader.at_end():
        raise SerializationError(
            f"Damaged data: {len(buf) - reader.pos} unexpected bytes follow the data.")
    return value
