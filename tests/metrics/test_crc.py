"""CRC32C: the compiled package (when installed) and the pure-Python loop give the same bytes."""

import numpy as np
import pytest

from flaxen.metrics import tfrecord

# The CRC-32C check value of "123456789" (RFC 3720, the iSCSI CRC).
CHECK = 0xE3069283


def test_pure_python_crc_matches_the_published_check_value():
    assert tfrecord.crc32c_python(b"123456789") == CHECK
    # Continuing from a prefix's CRC equals the CRC of the whole.
    assert tfrecord.crc32c_python(b"56789", tfrecord.crc32c_python(b"1234")) == CHECK


def test_compiled_and_pure_python_give_identical_bytes(monkeypatch):
    if tfrecord.CRC32C_BACKEND == "python":
        pytest.skip("no compiled CRC32C package installed (pip install google-crc32c; it is "
                    "in the metrics and dev extras)")
    rng = np.random.default_rng(0)
    payloads = [b"", b"a", b"123456789"] + [rng.bytes(n) for n in (7, 4096, 100_003)]
    compiled = [tfrecord.encode_record(p) for p in payloads]
    assert tfrecord.crc32c(b"123456789") == CHECK
    assert tfrecord.crc32c(b"56789", tfrecord.crc32c(b"1234")) == CHECK
    monkeypatch.setattr(tfrecord, "_crc_impl", tfrecord.crc32c_python)
    assert [tfrecord.encode_record(p) for p in payloads] == compiled
    for p in payloads:
        assert tfrecord.crc32c(p) == tfrecord._compiled[1](p, 0)
