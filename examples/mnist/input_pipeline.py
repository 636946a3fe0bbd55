"""MNIST and Fashion-MNIST from their four standard IDX files, with NumPy only.

No TensorFlow. A dataset is four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each gzip-compressed (``.gz``) or not.
They come from one of two places:

* ``--data_dir DIR``: a local folder, e.g. ``/usr/share/datasets/fashion-mnist`` from the Debian
  package ``dataset-fashion-mnist``;
* the download cache (``$FLAXEN_DATA_CACHE`` or ``~/.cache/flaxen/datasets/<name>``): files are
  downloaded once, checked against their SHA-256 and reused afterwards.

Checksums. Each file has up to two SHA-256 sums: one of the official ``.gz`` download and one of
the decompressed IDX content. Repackaged copies (the Debian package, the shared MNIST test digits)
are compressed differently but hold the same bytes once decompressed, so those copies are checked
by content. A file that matches neither known sum is rejected; a file for which no sum is known
(the MNIST training files outside the download cache) is checked for structure only.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging

from flaxen.errors import FlaxenError

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


class DataError(FlaxenError):
    """A dataset file is missing, corrupt, truncated or fails its checksum."""


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """One of the four IDX files of a dataset and what we know about its bytes."""

    stem: str  # file name without ``.gz``
    ndim: int  # 3 for images, 1 for labels
    count: int | None  # number of examples (None: any)
    gz_sha256: str | None  # SHA-256 of the official .gz download
    raw_sha256: str | None  # SHA-256 of the decompressed IDX content


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    mirrors: tuple[str, ...]
    files: dict[str, FileSpec]  # keys: train_images, train_labels, test_images, test_labels


# MNIST: .gz sums of the official files (the same bytes on every mirror below). The decompressed
# sums of the test files were computed from the real MNIST test digits in ../shared/data, whose
# .gz bytes differ from the download but whose content is the same; the decompressed sums of the
# training files are not known here (no copy offline), so those are checked through the .gz sum.
MNIST = DatasetSpec(
    name="mnist",
    mirrors=(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    files={
        "train_images": FileSpec(
            "train-images-idx3-ubyte", 3, 60000,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", None),
        "train_labels": FileSpec(
            "train-labels-idx1-ubyte", 1, 60000,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", None),
        "test_images": FileSpec(
            "t10k-images-idx3-ubyte", 3, 10000,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "test_labels": FileSpec(
            "t10k-labels-idx1-ubyte", 1, 10000,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    },
)

# Fashion-MNIST: decompressed sums, computed from the Debian package dataset-fashion-mnist
# (whose .gz files are recompressed, so their .gz sums differ from the download's). Downloads
# are checked by content too.
FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    files={
        "train_images": FileSpec(
            "train-images-idx3-ubyte", 3, 60000, None,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train_labels": FileSpec(
            "train-labels-idx1-ubyte", 1, 60000, None,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "test_images": FileSpec(
            "t10k-images-idx3-ubyte", 3, 10000, None,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "test_labels": FileSpec(
            "t10k-labels-idx1-ubyte", 1, 10000, None,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
)

# Any four IDX files of 28x28 images and labels 0..9 (e.g. a subset, or KMNIST) in --data_dir:
# structural checks only.
IDX = DatasetSpec(
    name="idx",
    mirrors=(),
    files={k: dataclasses.replace(f, count=None, gz_sha256=None, raw_sha256=None)
           for k, f in MNIST.files.items()},
)

DATASETS = {"mnist": MNIST, "fashion_mnist": FASHION_MNIST, "idx": IDX}


# -- IDX parsing -------------------------------------------------------------------------------


def read_bytes(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """Reads a file, decompressing it when it is gzip.

    Returns:
      ``(file_bytes, content)``: the bytes on disk and the decompressed IDX content.

    Raises:
      DataError: the gzip stream is corrupt or truncated.
    """
    data = Path(path).read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data, data
    try:
        return data, gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: the gzip data is corrupt or truncated ({e}). Delete the file and download "
            "it again (or copy it again from its source)."
        ) from e


def parse_idx(content: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parses an IDX file of unsigned bytes (the MNIST format).

    The header is two zero bytes, a type code (0x08 = uint8), the number of dimensions, and one
    big-endian uint32 per dimension; the data follows in C order.

    Args:
      content: the decompressed file content.
      name: the file name, for error messages.

    Returns:
      A uint8 array of the shape stored in the header.

    Raises:
      DataError: bad magic number, unsupported type, or data size not matching the header.
    """
    if len(content) < 4:
        raise DataError(f"{name}: {len(content)} bytes is too short for an IDX header (4 bytes).")
    zero, type_code, ndim = struct.unpack(">HBB", content[:4])
    if zero != 0 or type_code != 0x08 or not 1 <= ndim <= 4:
        magic = int.from_bytes(content[:4], "big")
        raise DataError(
            f"{name}: bad IDX magic number 0x{magic:08x}; expected 0x00000801 (labels) or "
            "0x00000803 (images). This is not an uncompressed or gzip-compressed MNIST IDX file."
        )
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{name}: truncated IDX header ({len(content)} of {header} bytes).")
    shape = struct.unpack(f">{ndim}I", content[4:header])
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        raise DataError(
            f"{name}: the header announces shape {shape}, i.e. {expected} bytes, but the file "
            f"holds {len(content)} bytes: the file is truncated or corrupt. Download or copy it "
            "again."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_file(path: Path, spec: FileSpec, *, require_checksum: bool) -> np.ndarray:
    """Reads, verifies and parses one IDX file.

    Args:
      path: the file (gzip or not).
      spec: what the file must hold.
      require_checksum: when true (downloaded and cached files), a file whose sums cannot be
        checked is an error; when false (``--data_dir``), it is accepted after structural checks.

    Returns:
      uint8 array ``(count, 28, 28)`` for images or ``(count,)`` for labels.

    Raises:
      DataError: a wrong checksum, corrupt data, or an unexpected shape.
    """
    file_bytes, content = read_bytes(path)
    sums = {_sha256(file_bytes)}
    if content is not file_bytes:
        sums.add(_sha256(content))
    known = [s for s in (spec.gz_sha256, spec.raw_sha256) if s]
    if known and not sums.intersection(known):
        if spec.raw_sha256 or require_checksum:
            raise DataError(
                f"{path}: wrong SHA-256 checksum. Got {sorted(sums)}; expected "
                f"{' or '.join(known)}. The file is corrupt or is not the expected one. "
                "Delete it so that it is downloaded again, or supply the right file."
            )
        logging.warning("%s: no known checksum matches (a repackaged copy?); checked its "
                        "structure only.", path)
    array = parse_idx(content, str(path))
    count = array.shape[0] if spec.count is None else spec.count
    expected_shape = (count, 28, 28) if spec.ndim == 3 else (count,)
    if array.shape != expected_shape:
        raise DataError(f"{path}: expected shape {expected_shape}, got {array.shape}.")
    if spec.ndim == 1 and array.size and array.max() > 9:
        raise DataError(f"{path}: labels must be 0..9, found {int(array.max())}.")
    return array


# -- Locating and downloading -----------------------------------------------------------------


def default_cache_dir(name: str) -> Path:
    root = os.environ.get("FLAXEN_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "flaxen", "datasets")
    return Path(root) / name


def find_file(folder: Path, stem: str) -> Path | None:
    """The file ``stem.gz`` or ``stem`` in ``folder``, whichever exists (gzip first)."""
    for candidate in (folder / (stem + ".gz"), folder / stem):
        if candidate.is_file():
            return candidate
    return None


def missing_files(spec: DatasetSpec, folder: Path) -> list[str]:
    return [f.stem + ".gz" for f in spec.files.values() if find_file(folder, f.stem) is None]


def _download(url: str, target: Path, timeout: float) -> None:
    """Downloads ``url`` atomically to ``target`` (temporary file, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def how_to_supply(spec: DatasetSpec, folder: Path, missing: Sequence[str]) -> str:
    urls = ", ".join(spec.mirrors)
    folder = Path(os.path.abspath(folder))  # a relative --data_dir is shown resolved
    return (
        f"Missing {spec.name} files in {folder}: {', '.join(missing)}. Either connect to the "
        f"internet (they are downloaded from {urls}), or copy the four IDX files (gzip or "
        f"not) into {folder}, or pass --data_dir=DIR with a folder that holds them. "
        f"Fashion-MNIST installs offline with `apt-get install dataset-fashion-mnist` "
        f"(files in {FASHION_MNIST_SYSTEM_DIR}); use it with --dataset=fashion_mnist."
    )


def ensure_downloaded(spec: DatasetSpec, cache_dir: Path | None = None,
                      mirrors: Sequence[str] | None = None, timeout: float = 20.0) -> Path:
    """Makes sure the cache holds all four files of ``spec``, downloading what is missing.

    Returns:
      The cache folder.

    Raises:
      DataError: some files could not be downloaded (the message says which and how to supply
        them), or a download fails its checksum (the bad file is deleted).
    """
    folder = cache_dir or default_cache_dir(spec.name)
    failures = []
    for f in spec.files.values():
        if find_file(folder, f.stem) is not None:
            continue
        target = folder / (f.stem + ".gz")
        for mirror in mirrors or spec.mirrors:
            url = mirror + f.stem + ".gz"
            try:
                logging.info("Downloading %s", url)
                _download(url, target, timeout)
                break
            except (urllib.error.URLError, OSError, ValueError) as e:
                failures.append(f"{url}: {e}")
        if not target.exists():
            break  # every mirror failed: most likely no network, so do not try the rest
        try:
            load_file(target, f, require_checksum=True)
        except DataError:
            target.unlink()
            raise
    missing = missing_files(spec, folder)
    if missing:
        raise DataError(how_to_supply(spec, folder, missing) + " Download errors: "
                        + "; ".join(failures[:2]))
    return folder


def load_dataset(spec: DatasetSpec, folder: Path, *, require_checksum: bool,
                 num_train_examples: int | None = None) -> tuple[dict, dict]:
    """Loads train and test splits from ``folder``.

    Returns:
      ``(train_ds, test_ds)``, dicts with ``'image'``: float32 ``(N, 28, 28, 1)`` in [0, 1] and
      ``'label'``: int32 ``(N,)``.
    """
    missing = missing_files(spec, folder)
    if missing:
        raise DataError(how_to_supply(spec, folder, missing))
    arrays = {k: load_file(find_file(folder, f.stem), f, require_checksum=require_checksum)
              for k, f in spec.files.items()}

    def split(prefix: str, limit: int | None = None) -> dict:
        images, labels = arrays[prefix + "_images"], arrays[prefix + "_labels"]
        if len(images) != len(labels):
            raise DataError(f"{folder}: {len(images)} {prefix} images but {len(labels)} "
                            f"{prefix} labels.")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return {"image": (images.astype(np.float32) / np.float32(255.0))[..., None],
                "label": labels.astype(np.int32)}

    return split("train", num_train_examples), split("test")


GET_FASHION_MNIST = "apt-get install dataset-fashion-mnist"


@dataclasses.dataclass
class Loaded:
    """The data a run uses and where it came from (for the end-of-run summary)."""

    train: dict
    test: dict
    name: str  # the dataset actually loaded: mnist, fashion_mnist or idx
    folder: Path  # where its files are
    note: str = ""  # why it is not the dataset asked for, if it is not


def fashion_mnist_dirs() -> list[Path]:
    """Where an installed Fashion-MNIST is looked for: ``$FLAXEN_DATA/fashion-mnist``, then
    the Debian package's standard location ``/usr/share/datasets/fashion-mnist``."""
    dirs = []
    if os.environ.get("FLAXEN_DATA"):
        dirs.append(Path(os.environ["FLAXEN_DATA"]) / "fashion-mnist")
    dirs.append(Path(FASHION_MNIST_SYSTEM_DIR))
    return dirs


def find_fashion_mnist() -> Path | None:
    """The first folder of :func:`fashion_mnist_dirs` that holds all four files, or None."""
    return next((d for d in fashion_mnist_dirs() if not missing_files(FASHION_MNIST, d)), None)


def load(dataset: str = "mnist", data_dir: str | None = None,
         num_train_examples: int | None = None, allow_fallback: bool = False,
         cache_dir: str | None = None) -> Loaded:
    """Finds and loads MNIST or Fashion-MNIST into memory.

    Where the files come from:

    * ``data_dir`` when given (no download);
    * mnist: ``$FLAXEN_DATA/mnist`` when it holds all four files, else the download cache
      (downloading what is missing);
    * fashion_mnist: ``$FLAXEN_DATA/fashion-mnist``, ``/usr/share/datasets/fashion-mnist``
      (the Debian package ``dataset-fashion-mnist``), else the download cache.

    Args:
      dataset: ``'mnist'``, ``'fashion_mnist'`` or ``'idx'`` (any four IDX files in
        ``data_dir``).
      data_dir: a local folder with the four IDX files; no download then.
      num_train_examples: keep only the first N training examples (quick runs).
      allow_fallback: when MNIST is neither found nor downloadable, use an installed
        Fashion-MNIST instead of failing, and say why in ``Loaded.note``.
      cache_dir: the download cache (default ``$FLAXEN_DATA_CACHE`` or ``~/.cache/flaxen``).

    Raises:
      DataError: unknown dataset, missing or damaged files (a one-line message that says how
        to get the data).
    """
    if dataset not in DATASETS:
        raise DataError(f"Unknown --dataset {dataset!r}; expected one of {sorted(DATASETS)}.")
    spec = DATASETS[dataset]
    if dataset == "idx" and not data_dir:
        raise DataError("--dataset=idx reads the four IDX files in --data_dir; pass --data_dir.")
    if data_dir:
        folder = Path(data_dir).resolve()
        train, test = load_dataset(spec, folder, require_checksum=False,
                                   num_train_examples=num_train_examples)
        return Loaded(train, test, dataset, folder)
    local = (find_fashion_mnist() if dataset == "fashion_mnist" else
             Path(os.environ["FLAXEN_DATA"]) / "mnist" if os.environ.get("FLAXEN_DATA") else None)
    if local is not None and not missing_files(spec, local):
        train, test = load_dataset(spec, local, require_checksum=False,
                                   num_train_examples=num_train_examples)
        return Loaded(train, test, dataset, local)
    folder = Path(cache_dir) if cache_dir else default_cache_dir(spec.name)
    try:
        ensure_downloaded(spec, folder)
    except DataError as e:
        if not (allow_fallback and dataset == "mnist"):
            raise
        fashion = find_fashion_mnist()
        if fashion is None:
            where = " or ".join(str(d) for d in fashion_mnist_dirs())
            raise DataError(
                f"MNIST is not in {folder} and could not be downloaded (no internet?), and "
                f"no Fashion-MNIST is installed in {where}. Install it with "
                f"`{GET_FASHION_MNIST}` (Debian/Ubuntu; then run this command again), or "
                "pass --data_dir=DIR with the four MNIST IDX files.") from e
        note = (f"MNIST is not in {folder} and could not be downloaded (no internet?), so "
                f"this run trains on the installed Fashion-MNIST from {fashion}. Pass "
                "--dataset=fashion_mnist to choose it, or --data_dir=DIR for your own MNIST.")
        logging.warning("%s", note)
        train, test = load_dataset(FASHION_MNIST, fashion, require_checksum=False,
                                   num_train_examples=num_train_examples)
        return Loaded(train, test, "fashion_mnist", fashion, note)
    train, test = load_dataset(spec, folder, require_checksum=True,
                               num_train_examples=num_train_examples)
    return Loaded(train, test, dataset, folder)


def get_datasets(dataset: str = "mnist", data_dir: str | None = None,
                 num_train_examples: int | None = None, allow_fallback: bool = False,
                 cache_dir: str | None = None) -> tuple[dict, dict, str]:
    """:func:`load` as ``(train_ds, test_ds, name of the dataset actually loaded)``.

    ``train_ds`` and ``test_ds`` are dicts with ``'image'``: float32 ``(N, 28, 28, 1)`` in
    [0, 1] and ``'label'``: int32 ``(N,)``.
    """
    loaded = load(dataset, data_dir, num_train_examples, allow_fallback, cache_dir)
    return loaded.train, loaded.test, loaded.name
