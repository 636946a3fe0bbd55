"""Fashion-MNIST (or MNIST) from its four IDX files, read with NumPy. No download.

Where the files are looked for, first match wins:

1. ``--data_dir`` (a folder with the four files, gzip-compressed or not);
2. ``$FLAXEN_DATA/fashion-mnist`` (``$FLAXEN_DATA/mnist`` for ``--dataset=mnist``);
3. ``/usr/share/datasets/fashion-mnist``, where ``apt-get install dataset-fashion-mnist``
   puts Fashion-MNIST.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from flaxen.errors import FlaxenError

SYSTEM_DIRS: dict[str, str | None] = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist", "mnist": None}
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


class DataError(FlaxenError):
    """The data files are missing, corrupt or not MNIST-shaped."""


def parse_idx(content: bytes, name: str = "<bytes>") -> np.ndarray:
    """An IDX file of unsigned bytes as a uint8 array of the shape in its header.

    The header is two zero bytes, the type code 0x08 (uint8), the number of dimensions and
    one big-endian uint32 per dimension; the data follows in C order.

    Raises:
      DataError: bad magic number, or a data size that does not match the header.
    """
    if len(content) < 4:
        raise DataError(f"{name}: {len(content)} bytes is too short for an IDX header.")
    zero, type_code, ndim = struct.unpack(">HBB", content[:4])
    if zero != 0 or type_code != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{name}: not an IDX file of bytes (magic {content[:4].hex()}, "
                        "expected 00000801 or 00000803).")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", content[4:header].ljust(4 * ndim, b"\0"))
    if len(content) != header + int(np.prod(shape)):
        raise DataError(f"{name}: the header announces shape {shape} but the file holds "
                        f"{len(content)} bytes; it is truncated or corrupt.")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(folder: Path, stem: str) -> np.ndarray:
    """Reads ``folder/stem.gz`` or ``folder/stem``."""
    for path in (folder / (stem + ".gz"), folder / stem):
        if path.is_file():
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError, zlib.error) as e:
                    raise DataError(f"{path}: corrupt or truncated gzip data ({e}).") from e
            return parse_idx(data, str(path))
    raise DataError(f"{folder}: no {stem}.gz (or {stem}).")


def find_data_dir(dataset: str, data_dir: str | None) -> Path:
    """The folder to read, following the order in the module docstring."""
    if dataset not in SYSTEM_DIRS:
        raise DataError(f"--dataset={dataset!r}: expected one of {sorted(SYSTEM_DIRS)}.")
    if data_dir:
        return Path(data_dir)
    candidates = []
    if os.environ.get("FLAXEN_DATA"):
        candidates.append(Path(os.environ["FLAXEN_DATA"]) / dataset.replace("_", "-"))
    system_dir = SYSTEM_DIRS[dataset]
    if system_dir:
        candidates.append(Path(system_dir))
    for folder in candidates:
        if all((folder / (s + ".gz")).is_file() or (folder / s).is_file()
               for s in FILES.values()):
            return folder
    hint = (" Fashion-MNIST installs with `apt-get install dataset-fashion-mnist`."
            if dataset == "fashion_mnist" else "")
    raise DataError(f"No {dataset} files found in {[str(c) for c in candidates] or 'any'}"
                    f" default folder; pass --data_dir=DIR with the four IDX files.{hint}")


def get_datasets(dataset: str = "fashion_mnist", data_dir: str | None = None
                 ) -> tuple[dict, dict]:
    """Loads the training and test sets into memory.

    Returns:
      ``(train_ds, test_ds)``: dicts with ``'image'`` float32 ``(N, 28, 28, 1)`` in
      ``[0, 1]`` and ``'label'`` int32 ``(N,)`` (60,000 and 10,000 examples).

    Raises:
      DataError: missing, corrupt or wrongly shaped files.
    """
    folder = find_data_dir(dataset, data_dir)
    if not folder.is_dir():
        raise DataError(f"--data_dir={folder}: no such folder.")
    arrays = {k: read_idx(folder, stem) for k, stem in FILES.items()}
    out = []
    for split in ("train", "test"):
        images, labels = arrays[split + "_images"], arrays[split + "_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise DataError(f"{folder}: expected {split} images (N, 28, 28) and labels (N,), "
                            f"got {images.shape} and {labels.shape}.")
        out.append({"image": (images.astype(np.float32) / np.float32(255.0))[..., None],
                    "label": labels.astype(np.int32)})
    return out[0], out[1]


def to_gan_range(images: np.ndarray) -> np.ndarray:
    """``[0, 1]`` images to the generator's ``[-1, 1]`` range (and back: ``from_gan_range``)."""
    return images * np.float32(2.0) - np.float32(1.0)


def from_gan_range(images):
    return (images + 1.0) * 0.5
