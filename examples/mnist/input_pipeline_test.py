"""IDX parsing of the real MNIST test digits; download cache, checksums and bad files."""

import dataclasses
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from examples.mnist import input_pipeline as ip

_DATA = os.environ.get("FLAXEN_DATA")
SHARED_MNIST = (Path(_DATA) / "mnist-t10k" if _DATA and (Path(_DATA) / "mnist-t10k").is_dir()
                else None)
needs_shared = pytest.mark.skipif(
    SHARED_MNIST is None, reason="real MNIST test digits not found: set FLAXEN_DATA to a folder "
    "holding mnist-t10k/")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written independently of the code under test."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = rng.integers(0, 10, (n,))
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))  # not gzip
    return folder


@needs_shared
def test_real_mnist_test_digits():
    images = ip.load_file(SHARED_MNIST / "t10k-images-idx3-ubyte.gz",
                          ip.MNIST.files["test_images"], require_checksum=True)
    labels = ip.load_file(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz",
                          ip.MNIST.files["test_labels"], require_checksum=True)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    # Published facts about the MNIST test set: the first labels, the per-class counts, and
    # the mean pixel intensity (about 0.1325 of 255).
    np.testing.assert_array_equal(labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    np.testing.assert_array_equal(np.bincount(labels),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert abs(images.mean() / 255 - 0.1325) < 0.001
    # The same bytes parsed by hand with struct.
    raw = gzip.decompress((SHARED_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert struct.unpack(">IIII", raw[:16]) == (0x803, 10000, 28, 28)
    np.testing.assert_array_equal(images[1].reshape(-1), np.frombuffer(raw[16 + 784:16 + 1568],
                                                                       np.uint8))


def test_parse_round_trip_and_normalisation(tmp_path):
    folder = write_idx_dir(tmp_path / "d")
    train, test, name = ip.get_datasets("idx", str(folder))
    assert name == "idx"
    assert train["image"].shape == (20, 28, 28, 1) and train["image"].dtype == np.float32
    assert test["label"].dtype == np.int32 and test["label"].shape == (10,)
    raw = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    np.testing.assert_allclose(train["image"][3, :, :, 0].reshape(-1),
                               np.frombuffer(raw[16 + 3 * 784:16 + 4 * 784], np.uint8) / 255.0,
                               rtol=1e-6)
    train5, _, _ = ip.get_datasets("idx", str(folder), num_train_examples=5)
    assert len(train5["label"]) == 5


def test_bad_magic(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x00\x0d\x03" + bytes(12))
    with pytest.raises(ip.DataError, match=r"bad IDX magic number 0x00000d03.*0x00000803"):
        ip.load_file(path, ip.IDX.files["test_images"], require_checksum=False)
    with pytest.raises(ip.DataError, match="bad IDX magic"):
        ip.parse_idx(b"PK\x03\x04" + bytes(20), "zip")


def test_truncated_files(tmp_path):
    data = idx_bytes(np.zeros((3, 28, 28)))
    with pytest.raises(ip.DataError, match=r"shape \(3, 28, 28\).*truncated"):
        ip.parse_idx(data[:-1], "cut")
    with pytest.raises(ip.DataError, match="too short"):
        ip.parse_idx(b"\x00\x00", "tiny")
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(ip.DataError, match="gzip data is corrupt or truncated"):
        ip.load_file(path, ip.IDX.files["test_images"], require_checksum=False)


def test_wrong_shapes_and_labels(tmp_path):
    path = tmp_path / "l"
    path.write_bytes(idx_bytes(np.array([1, 2, 12])))
    with pytest.raises(ip.DataError, match="labels must be 0..9, found 12"):
        ip.load_file(path, ip.IDX.files["test_labels"], require_checksum=False)
    path.write_bytes(idx_bytes(np.zeros((2, 5, 5))))
    with pytest.raises(ip.DataError, match=r"expected shape \(2, 28, 28\), got \(2, 5, 5\)"):
        ip.load_file(path, ip.IDX.files["test_images"], require_checksum=False)


@needs_shared
def test_wrong_checksum(tmp_path):
    raw = bytearray(gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one label changed: still a valid IDX file
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ip.DataError, match="wrong SHA-256 checksum"):
        ip.load_file(path, ip.MNIST.files["test_labels"], require_checksum=False)


def _fake_spec(source: Path) -> ip.DatasetSpec:
    """A spec whose .gz sums are those of the files in ``source``."""
    files = {}
    for key, f in ip.IDX.files.items():
        gz = source / (f.stem + ".gz")
        if not gz.exists():
            gz.write_bytes(gzip.compress((source / f.stem).read_bytes()))
        files[key] = dataclasses.replace(f, gz_sha256=ip._sha256(gz.read_bytes()))
    return ip.DatasetSpec("fake", (source.as_uri() + "/",), files)


def test_download_once_then_reuse_cache(tmp_path):
    source = write_idx_dir(tmp_path / "server")
    spec = _fake_spec(source)
    cache = tmp_path / "cache"
    assert ip.ensure_downloaded(spec, cache) == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f.stem + ".gz" for f in spec.files.values())
    for p in source.iterdir():  # the "server" goes away: the cache is enough
        p.unlink()
    ip.ensure_downloaded(spec, cache)
    train, test = ip.load_dataset(spec, cache, require_checksum=True)
    assert train["image"].shape == (20, 28, 28, 1)


def test_download_with_wrong_checksum_is_deleted(tmp_path):
    source = write_idx_dir(tmp_path / "server")
    spec = _fake_spec(source)
    bad = dataclasses.replace(spec.files["test_labels"], gz_sha256="0" * 64)
    spec = dataclasses.replace(spec, files={**spec.files, "test_labels": bad})
    cache = tmp_path / "cache"
    with pytest.raises(ip.DataError, match="wrong SHA-256"):
        ip.ensure_downloaded(spec, cache)
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists()


def test_no_network_says_which_files_and_how(tmp_path):
    spec = dataclasses.replace(ip.MNIST, mirrors=((tmp_path / "nowhere").as_uri() + "/",))
    with pytest.raises(ip.DataError) as e:
        ip.ensure_downloaded(spec, tmp_path / "cache")
    msg = str(e.value)
    for f in ip.MNIST.files.values():
        assert f.stem + ".gz" in msg
    assert "--data_dir" in msg and "dataset-fashion-mnist" in msg


def test_unknown_dataset_and_idx_without_dir():
    with pytest.raises(ip.DataError, match="Unknown --dataset 'cifar'"):
        ip.get_datasets("cifar")
    with pytest.raises(ip.DataError, match="pass --data_dir"):
        ip.get_datasets("idx")


def test_missing_files_in_data_dir(tmp_path):
    write_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ip.DataError, match="Missing idx files.*t10k-labels-idx1-ubyte.gz"):
        ip.get_datasets("idx", str(tmp_path))


def test_missing_files_message_shows_a_relative_data_dir_resolved(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ip.DataError) as e:
        ip.get_datasets("idx", "empty")
    assert f"Missing idx files in {tmp_path / 'empty'}:" in str(e.value)


@pytest.mark.skipif(not Path(ip.FASHION_MNIST_SYSTEM_DIR).is_dir(), reason="no Fashion-MNIST")
def test_fallback_to_local_fashion_mnist(tmp_path, monkeypatch):
    offline = dataclasses.replace(ip.MNIST, mirrors=((tmp_path / "nowhere").as_uri() + "/",))
    monkeypatch.setattr(ip, "MNIST", offline)
    monkeypatch.setitem(ip.DATASETS, "mnist", offline)
    with pytest.raises(ip.DataError, match="Missing mnist files"):
        ip.get_datasets("mnist", cache_dir=str(tmp_path / "c"))
    train, test, name = ip.get_datasets("mnist", cache_dir=str(tmp_path / "c"),
                                        allow_fallback=True, num_train_examples=100)
    assert name == "fashion_mnist" and train["image"].shape == (100, 28, 28, 1)
    assert len(test["label"]) == 10000
