"""Binarised MNIST or Fashion-MNIST from the four standard IDX files, with NumPy only.

A dataset is a folder with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each gzip-compressed ``.gz`` or
not). The folder is, in this order: ``--data_dir``; ``$FLAXEN_DATA/fashion-mnist`` or
``$FLAXEN_DATA/mnist``; for Fashion-MNIST the Debian package's folder
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

Binarisation is the classic one of the binarised-MNIST benchmark: each pixel is drawn once
from a Bernoulli distribution with the grey level (0..1) as its probability, with a fixed
seed, so every run (and every process) sees the same binary images.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from flaxen.errors import FlaxenError

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FOLDER_NAMES = {"fashion_mnist": "fashion-mnist", "mnist": "mnist"}
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
BINARIZATION_SEED = 1234  # fixed: part of the dataset's definition, not of a run


class DataError(FlaxenError):
    """A dataset folder or file is missing, corrupt or not MNIST-shaped."""


def parse_idx(content: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parses an uncompressed IDX file of unsigned bytes.

    The header is two zero bytes, the type code 0x08 (uint8), the number of dimensions and one
    big-endian uint32 per dimension; the data follows in C order.

    Returns:
      A uint8 array of the shape in the header.

    Raises:
      DataError: bad magic number, or a data size that does not match the header.
    """
    if len(content) < 4:
        raise DataError(f"{name}: {len(content)} bytes is too short for an IDX header.")
    zero, type_code, ndim = struct.unpack(">HBB", content[:4])
    if zero != 0 or type_code != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{name}: bad IDX magic number 0x{content[:4].hex()}; expected "
                        "0x00000801 (labels) or 0x00000803 (images).")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", content[4:header].ljust(4 * ndim, b"\0"))
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        raise DataError(f"{name}: the header announces shape {shape} ({expected} bytes) but the "
                        f"file holds {len(content)} bytes: it is truncated or corrupt.")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Reads ``path`` (gzip or not) and parses it; see ``parse_idx``."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: the gzip data is corrupt or truncated ({e}). Copy the "
                            "file again.") from e
    return parse_idx(data, str(path))


def candidate_dirs(dataset: str, data_dir: str | None) -> list[Path]:
    """Where to look for ``dataset``, first match wins (see the module docstring)."""
    if data_dir:
        return [Path(data_dir).expanduser()]
    dirs = []
    if os.environ.get("FLAXEN_DATA"):
        dirs.append(Path(os.environ["FLAXEN_DATA"]) / FOLDER_NAMES[dataset])
    if dataset == "fashion_mnist":
        dirs.append(Path(FASHION_MNIST_SYSTEM_DIR))
    return dirs


def find_folder(dataset: str, data_dir: str | None) -> Path:
    """The first folder of ``candidate_dirs`` that holds all four files.

    Raises:
      DataError: unknown dataset, or no folder holds all four files (the message lists
        what is missing where, and how to supply it).
    """
    if dataset not in FOLDER_NAMES:
        raise DataError(f"Unknown dataset {dataset!r}; expected one of {sorted(FOLDER_NAMES)}.")
    problems = []
    for folder in candidate_dirs(dataset, data_dir):
        missing = [stem + ".gz" for stem in FILES.values()
                   if not (folder / (stem + ".gz")).is_file() and not (folder / stem).is_file()]
        if not missing:
            return folder
        problems.append(f"{folder} lacks {', '.join(missing)}")
    hint = ("pass --data_dir=DIR with a folder holding the four IDX files (gzip or not), or put "
            f"them in $FLAXEN_DATA/{FOLDER_NAMES[dataset]}")
    if dataset == "fashion_mnist":
        hint += ", or `apt-get install dataset-fashion-mnist`"
    where = "; ".join(problems) if problems else "no --data_dir and no $FLAXEN_DATA given"
    raise DataError(f"{dataset} not found ({where}). To fix: {hint}.")


def binarize(images: np.ndarray, seed: int) -> np.ndarray:
    """Draws each pixel once: 1 with probability ``grey / 255``.

    Args:
      images: uint8 ``(N, 28, 28)`` grey levels.
      seed: the seed of the draw.

    Returns:
      uint8 ``(N, 784)`` of zeros and ones.
    """
    flat = images.reshape((images.shape[0], -1)).astype(np.float32) / np.float32(255.0)
    uniform = np.random.RandomState(seed).random_sample(flat.shape).astype(np.float32)
    return (uniform < flat).astype(np.uint8)


def load_split(folder: Path, split: str, seed: int) -> dict[str, np.ndarray]:
    """One split (``'train'`` or ``'test'``): ``{'image': uint8 (N, 784), 'label': int32 (N,)}``."""
    images = read_idx(_find(folder, FILES[split + "_images"]))
    labels = read_idx(_find(folder, FILES[split + "_labels"]))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataError(f"{folder}: expected {split} images (N, 28, 28) and labels (N,), got "
                        f"{images.shape} and {labels.shape}.")
    return {"image": binarize(images, seed), "label": labels.astype(np.int32)}


def _find(folder: Path, stem: str) -> Path:
    gz = folder / (stem + ".gz")
    return gz if gz.is_file() else folder / stem


def get_datasets(dataset: str = "fashion_mnist", data_dir: str | None = None,
                 num_train_examples: int | None = None) -> tuple[dict, dict, Path]:
    """Loads and binarises both splits into memory.

    Args:
      dataset: ``'fashion_mnist'`` or ``'mnist'``.
      data_dir: a folder with the four IDX files (default: see the module docstring).
      num_train_examples: keep only the first N training images (quick runs).

    Returns:
      ``(train_ds, test_ds, folder)``; each split is ``{'image': uint8 (N, 784) in {0, 1},
      'label': int32 (N,)}`` (labels are only used to pick pictures).

    Raises:
      DataError: missing, corrupt or wrongly shaped files.
    """
    folder = find_folder(dataset, data_dir)
    train = load_split(folder, "train", BINARIZATION_SEED)
    test = load_split(folder, "test", BINARIZATION_SEED + 1)
    if num_train_examples:
        train = {k: v[:num_train_examples] for k, v in train.items()}
    return train, test, folder
