"""Segmentation canvases made of Fashion-MNIST (or MNIST) images, generated once and cached.

A canvas is a ``64x64`` grey image holding 1 to 4 images of ``28x28`` pixels pasted at random
positions (they may overlap). Its label map gives every pixel a class:

* ``0``: background;
* ``k + 1``: the image of class ``k`` (0..9) that covers the pixel.

*Covering* is defined by the image's foreground: the pixels whose grey value exceeds
``threshold * 255`` (default 0.05, i.e. values 13..255). Images are pasted in order, and each
one's foreground overwrites the canvas (value and label), so a later image occludes an earlier
one where their foregrounds overlap. The faint pixels below the threshold stay in the canvas
(where no foreground covers them) but are labelled background.

Training canvases use only training images, test canvases only test images. Generation is
deterministic given the seed, the split and the other settings; the result is cached as a
``.npz`` file whose name holds a key of all of them and of the SHA-256 of the source files, so
changing any setting (or the source data) generates a new file instead of reusing a stale one.
No pickle: the cache is plain arrays, loaded with ``allow_pickle=False``.

The IDX reader is a dozen lines of NumPy (this example is self-contained: fork the folder).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from absl import logging

from flaxen.errors import FlaxenError

CANVAS_SIZE = 64
NUM_CLASSES = 11  # background + 10 image classes
SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist
GENERATOR_VERSION = 1  # bump when the generator's output changes, so old caches are not used

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(f"digit {k}" for k in range(10))
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


class DataError(FlaxenError):
    """Missing or damaged source files (train.py prints it as one ``Error:`` line)."""


def class_names(dataset: str) -> tuple[str, ...]:
    """The 11 label names: ``background`` and the 10 classes of ``dataset``."""
    return ("background",) + (FASHION_MNIST_CLASSES if dataset == "fashion_mnist"
                              else MNIST_CLASSES)


# -- Source images ---------------------------------------------------------------------------


def default_data_dir(dataset: str) -> str:
    """``$FLAXEN_DATA/<dataset folder>`` if it exists, else the apt Fashion-MNIST folder."""
    folder = {"fashion_mnist": "fashion-mnist", "mnist": "mnist"}[dataset]
    root = os.environ.get("FLAXEN_DATA")
    if root and Path(root, folder).is_dir():
        return str(Path(root, folder))
    if dataset == "fashion_mnist":
        return SYSTEM_FASHION_MNIST
    return str(Path(root or ".", folder))


def read_idx(path: Path) -> tuple[np.ndarray, str]:
    """One IDX file of unsigned bytes (gzip or not).

    Returns:
      ``(array, sha256)``: the uint8 array of the shape in the header, and the SHA-256 of the
      decompressed content (part of the cache key).
    """
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e}); copy it again.") from e
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number "
                        f"{data[:4].hex()}; expected 00000801 or 00000803).")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    if len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise DataError(f"{path}: the header says shape {shape} but the file holds "
                        f"{len(data)} bytes: truncated or corrupt; copy it again.")
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return array, hashlib.sha256(data).hexdigest()


def load_source(data_dir: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The four IDX files of ``data_dir`` (``<name>`` or ``<name>.gz``).

    Returns:
      ``(arrays, sums)``: ``arrays['train_images']`` uint8 ``(N, 28, 28)``,
      ``arrays['train_labels']`` uint8 ``(N,)`` (values 0..9), the same for ``test_``; and the
      SHA-256 of each file's content.

    Raises:
      DataError: a file is missing, damaged or has the wrong shape.
    """
    folder = Path(data_dir)
    arrays, sums, missing = {}, {}, []
    for key, stem in FILES.items():
        path = next((p for p in (folder / (stem + ".gz"), folder / stem) if p.is_file()), None)
        if path is None:
            missing.append(stem + "[.gz]")
            continue
        arrays[key], sums[key] = read_idx(path)
    if missing:
        raise DataError(
            f"{folder}: missing {', '.join(missing)}. Pass --data_dir=DIR with the four IDX "
            f"files of Fashion-MNIST or MNIST (Fashion-MNIST: `apt-get install "
            f"dataset-fashion-mnist` puts them in {SYSTEM_FASHION_MNIST}).")
    for split in ("train", "test"):
        images, labels = arrays[split + "_images"], arrays[split + "_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise DataError(f"{folder}: expected {split} images (N, 28, 28) and labels (N,), "
                            f"got {images.shape} and {labels.shape}.")
        if labels.max() > 9:
            raise DataError(f"{folder}: {split} labels must be 0..9, found {labels.max()}.")
    return arrays, sums


# -- Canvases --------------------------------------------------------------------------------


def make_canvases(images: np.ndarray, labels: np.ndarray, num: int, seed: int | list[int],
                  max_objects: int = 4, threshold: float = 0.05,
                  size: int = CANVAS_SIZE) -> dict[str, np.ndarray]:
    """Pastes 1..``max_objects`` random images at random positions on each of ``num`` canvases.

    Args:
      images: uint8 ``(N, h, w)`` source images; labels: their classes ``(N,)``, 0..9.
      num: number of canvases. seed: anything ``np.random.default_rng`` takes.
      max_objects: the number of images per canvas is uniform in ``1..max_objects``.
      threshold: foreground is ``value > threshold * 255`` (see the module docstring).
      size: canvas height and width.

    Returns:
      ``{'image': uint8 (num, size, size), 'label': uint8 (num, size, size)}``, label 0 for
      background and ``k + 1`` for class ``k``.
    """
    rng = np.random.default_rng(seed)
    h, w = images.shape[1:]
    canvas = np.zeros((num, size, size), np.uint8)
    label = np.zeros((num, size, size), np.uint8)
    cut = int(threshold * 255)  # foreground: value > cut
    counts = rng.integers(1, max_objects + 1, num)
    for i, count in enumerate(counts):
        picks = rng.integers(0, len(images), count)
        rows = rng.integers(0, size - h + 1, count)
        cols = rng.integers(0, size - w + 1, count)
        for k, r, c in zip(picks, rows, cols):
            img = images[k]
            fg = img > cut
            pix, lab = canvas[i, r:r + h, c:c + w], label[i, r:r + h, c:c + w]  # views
            faint = ~fg & (lab == 0)  # background stays the brightest faint value
            pix[faint] = np.maximum(pix[faint], img[faint])
            pix[fg] = img[fg]
            lab[fg] = labels[k] + 1
    return {"image": canvas, "label": label}


def default_cache_dir() -> str:
    root = os.environ.get("FLAXEN_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "flaxen", "datasets")
    return os.path.join(root, "segmentation")


def _cache_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _load_cache(path: Path, key: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                raise ValueError(f"key {f['key']} != {key}")
            return {"image": f["image"], "label": f["label"]}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zlib.error) as e:  # damaged: make it again
        logging.warning("Ignoring the damaged cache file %s (%s); generating it again.", path, e)
        return None


def _save_cache(path: Path, key: str, data: dict[str, np.ndarray]) -> None:
    """Writes through a temporary file and a rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, key=np.array(key), **data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def get_datasets(dataset: str = "fashion_mnist", data_dir: str | None = None,
                 num_train: int = 20000, num_test: int = 2000, seed: int = 0,
                 max_objects: int = 4, threshold: float = 0.05, cache_dir: str | None = None,
                 write_cache: bool = True) -> tuple[dict, dict]:
    """Train and test canvases, from the cache when it holds the same settings.

    Args:
      dataset: ``'fashion_mnist'`` or ``'mnist'`` (the default folder and the class names).
      data_dir: the folder of the four IDX files (default: ``default_data_dir(dataset)``).
      num_train, num_test: canvases per split.
      seed: the generator's seed (the training seed of train.py is separate).
      max_objects, threshold: see ``make_canvases``.
      cache_dir: where the ``.npz`` files go (default ``$FLAXEN_DATA_CACHE/segmentation`` or
        ``~/.cache/flaxen/datasets/segmentation``).
      write_cache: False on all processes but the first of a multi-process run (they generate
        the same canvases, or read the file once it is there).

    Returns:
      ``(train_ds, test_ds)``, each ``{'image': uint8 (n, 64, 64), 'label': uint8 (n, 64, 64)}``.

    Raises:
      DataError: missing or damaged source files, or bad settings.
    """
    if dataset not in ("fashion_mnist", "mnist"):
        raise DataError(f"--dataset={dataset!r}: expected 'fashion_mnist' or 'mnist'.")
    if not 1 <= max_objects or not 0.0 <= threshold < 1.0 or num_train < 1 or num_test < 1:
        raise DataError(f"Bad canvas settings: max_objects={max_objects} (>= 1), threshold="
                        f"{threshold} (0 <= t < 1), num_train={num_train}, num_test={num_test} "
                        "(>= 1).")
    data_dir = data_dir or default_data_dir(dataset)
    source, sums = load_source(data_dir)
    cache = Path(cache_dir or default_cache_dir())
    out = []
    for split_id, (split, num) in enumerate((("train", num_train), ("test", num_test))):
        settings = {"version": GENERATOR_VERSION, "split": split, "num": num, "seed": seed,
                    "max_objects": max_objects, "threshold": threshold, "size": CANVAS_SIZE,
                    "images": sums[split + "_images"], "labels": sums[split + "_labels"]}
        key = _cache_key(settings)
        path = cache / f"{dataset}_{split}_{num}_{key}.npz"
        data = _load_cache(path, key)
        if data is None:
            logging.info("Generating %d %s canvases (seed %d) into %s", num, split, seed, path)
            data = make_canvases(source[split + "_images"], source[split + "_labels"], num,
                                 [seed, split_id], max_objects, threshold)
            if write_cache:
                _save_cache(path, key, data)
        out.append(data)
    return out[0], out[1]
