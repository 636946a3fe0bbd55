"""ImageNet input pipeline: image folders decoded with Pillow, no TensorFlow.

Layout (the one ``torchvision.datasets.ImageFolder`` also reads)::

    <data_dir>/train/<wnid>/*.JPEG      e.g. train/n01440764/n01440764_10026.JPEG
    <data_dir>/val/<wnid>/*.JPEG

Class ``i`` is the ``i``-th class folder of ``train`` in sorted order, so the labels of
``train`` and ``val`` agree as long as both have the same folder names.

The host yields ``uint8`` batches (a quarter of the bytes of float32); the jitted step
normalises them on the device with ``normalize``. Decoding runs on a pool of threads
(Pillow releases the GIL while it decodes and resizes), batches are assembled by a
background thread (``background``), and ``flaxen.jax_utils.prefetch_to_device`` keeps a
couple of batches already placed on the devices, so the accelerator does not wait.

Augmentation is deterministic: image ``i`` of epoch ``e`` draws its crop and flip from
``numpy.random.default_rng((seed, e, i))``, so a run is reproducible whatever the number
of threads or devices, and resuming at an epoch replays that epoch exactly.

Fashion-MNIST (IDX files) is also readable here (``load_idx_dataset``) so that the same
train loop can be checked on real data on a small machine.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gzip
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from flaxen.errors import FlaxenError

# The usual ImageNet channel statistics, in the 0..255 scale of the decoded pixels.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Fashion-MNIST training-set statistics (0..255 scale).
FASHION_MNIST_MEAN = (0.2860 * 255,)
FASHION_MNIST_STDDEV = (0.3530 * 255,)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
# Evaluation resizes so the centre crop covers image_size / (image_size + CROP_PADDING) of
# the shorter side: 224 / 256 = 0.875, the standard ratio.
CROP_PADDING = 32

Batch = dict[str, np.ndarray]


class DatasetError(FlaxenError):
    """The data directory is missing or not in the expected layout."""


# -- Finding the files ------------------------------------------------------------------


class ImageFolder:
    """The files and labels of one split (``train`` or ``val``) of an image-folder dataset.

    Attributes:
      split_dir: the folder that holds one sub-folder per class.
      classes: sorted class folder names (ImageNet wnids); label ``i`` is ``classes[i]``.
      files: the image paths, sorted by class then file name.
      labels: int32 array, ``labels[k]`` is the class index of ``files[k]``.
    """

    def __init__(self, data_dir: str, split: str, classes: Sequence[str] | None = None):
        """Lists ``data_dir/split/<class>/*``.

        Args:
          data_dir: the dataset root (holding ``train/`` and ``val/``).
          split: ``'train'`` or ``'val'``.
          classes: the class names to use (pass the train split's ``classes`` for ``val`` so
            labels agree); by default the sorted sub-folders of the split.

        Raises:
          DatasetError: the split folder is missing, has no class folders, a class folder
            has no images, or a class folder is not among ``classes``.
        """
        self.split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(self.split_dir):
            raise DatasetError(
                f"Data directory {self.split_dir!r} does not exist (expected the layout "
                f"{os.path.join(data_dir, split, '<class>', '*.JPEG')}). Pass the folder that "
                "holds train/ and val/ with --data_dir; see the example's README for how to "
                "lay out ImageNet."
            )
        found = sorted(e.name for e in os.scandir(self.split_dir) if e.is_dir())
        if not found:
            raise DatasetError(
                f"{self.split_dir!r} has no class sub-folders: expected one folder per class "
                "(e.g. n01440764/) holding that class's images."
            )
        self.classes = list(found if classes is None else classes)
        index = {name: i for i, name in enumerate(self.classes)}
        unknown = [name for name in found if name not in index]
        if unknown:
            raise DatasetError(
                f"{self.split_dir!r} has class folders that the training split does not have: "
                f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}. Both splits must use the "
                "same class folder names."
            )
        files: list[str] = []
        labels: list[int] = []
        empty: list[str] = []
        for name in found:
            folder = os.path.join(self.split_dir, name)
            images = sorted(e.name for e in os.scandir(folder)
                            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
            if not images:
                empty.append(folder)
            files.extend(os.path.join(folder, f) for f in images)
            labels.extend([index[name]] * len(images))
        if empty:
            raise DatasetError(
                f"{len(empty)} class folder(s) contain no images (files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)}): {empty[:5]}{' ...' if len(empty) > 5 else ''}. "
                "Most likely an archive was not fully extracted; extract it again or remove "
                "the empty folder."
            )
        self.files = files
        self.labels = np.asarray(labels, np.int32)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)


# -- Decoding and augmentation ----------------------------------------------------------


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            area_range: tuple[float, float] = (0.08, 1.0),
                            aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
                            attempts: int = 10) -> tuple[int, int, int, int]:
    """A random crop box ``(left, top, right, bottom)`` (the Inception-style crop).

    Tries ``attempts`` times to draw an area fraction in ``area_range`` and a log-uniform
    aspect ratio in ``aspect_range`` that fit in the image; otherwise the central crop of
    the largest box whose aspect ratio is within range.
    """
    area = width * height
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(attempts):
        target = area * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < aspect_range[0]:
        w, h = width, int(round(width / aspect_range[0]))
    elif ratio > aspect_range[1]:
        w, h = int(round(height * aspect_range[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int, image_size: int) -> tuple[int, int, int, int]:
    """The central square covering ``image_size / (image_size + 32)`` of the shorter side."""
    side = max(1, int(round(min(width, height) * image_size / (image_size + CROP_PADDING))))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decode_train(path: str, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Decodes ``path``, random-resized-crops it and flips it half the time.

    Returns:
      ``uint8[image_size, image_size, 3]``.
    """
    with Image.open(path) as img:
        img = img.convert("RGB")
        box = random_resized_crop_box(img.width, img.height, rng)
        out = img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
    if rng.uniform() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, np.uint8)


def decode_eval(path: str, image_size: int) -> np.ndarray:
    """Decodes ``path``, takes the central crop and resizes it. Returns ``uint8[S, S, 3]``."""
    with Image.open(path) as img:
        # JPEG can decode at 1/2, 1/4, 1/8 scale directly, much faster for large photos.
        img.draft("RGB", (image_size + CROP_PADDING, image_size + CROP_PADDING))
        img = img.convert("RGB")
        box = center_crop_box(img.width, img.height, image_size)
        out = img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, np.uint8)


class SkipCounter:
    """Counts images that could not be decoded (thread-safe); logs each one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.paths: list[str] = []

    def add(self, path: str, error: Exception) -> None:
        with self._lock:
            self.count += 1
            if len(self.paths) < 100:
                self.paths.append(path)
        logging.warning("Skipping unreadable image %s (%s: %s); %d skipped so far.",
                        path, type(error).__name__, error, self.count)


def _safe(decode: Callable[[], np.ndarray], path: str, skipped: SkipCounter) -> np.ndarray | None:
    try:
        return decode()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        skipped.add(path, e)
        return None


# -- Batches ----------------------------------------------------------------------------


class ImageFolderPipeline:
    """Batches of ``{'image': uint8[B, S, S, 3], 'label': int32[B]}`` from an ImageFolder.

    Training batches come from a fresh permutation each epoch (``seed`` and epoch
    determine it), with the last partial batch dropped; an unreadable image is counted in
    ``skipped`` and replaced by the next readable image of its batch. Evaluation batches
    cover every image once in order; the last batch is padded and carries ``mask``
    (float32[B], 1 for real images, 0 for padding and unreadable images) so metrics count
    every readable image exactly once.
    """

    def __init__(self, folder: ImageFolder, batch_size: int, image_size: int, train: bool,
                 seed: int = 0, num_workers: int | None = None):
        if batch_size <= 0 or image_size <= 0:
            raise DatasetError(f"batch_size and image_size must be positive, got {batch_size} "
                               f"and {image_size}.")
        if train and len(folder) < batch_size:
            raise DatasetError(f"{folder.split_dir!r} has {len(folder)} images, fewer than one "
                               f"batch of {batch_size}; lower --batch_size.")
        self.folder = folder
        self.batch_size = batch_size
        self.image_size = image_size
        self.train = train
        self.seed = seed
        self.num_workers = num_workers or min(32, (os.cpu_count() or 1) + 4)
        self.skipped = SkipCounter()

    @property
    def num_classes(self) -> int:
        return self.folder.num_classes

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.folder)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def _decoder(self, epoch: int) -> Callable[[int], np.ndarray | None]:
        files, size, seed = self.folder.files, self.image_size, self.seed

        def decode(k: int) -> np.ndarray | None:
            path = files[k]
            if self.train:
                rng = np.random.default_rng((seed, epoch, k))
                return _safe(lambda: decode_train(path, size, rng), path, self.skipped)
            return _safe(lambda: decode_eval(path, size), path, self.skipped)

        return decode

    def epoch(self, epoch: int = 0, rows: slice = slice(None)) -> Iterator[Batch]:
        """The batches of one epoch, decoded in parallel and assembled in order.

        Args:
          epoch: selects the permutation and the augmentation of a training epoch.
          rows: the rows of every (global) batch this process reads and returns (see
            ``flaxen.distributed.local_rows``); by default all of them. The batches do not
            depend on how they are split: global batch ``k`` is always the images at
            positions ``k * batch_size ...`` of the epoch's order.
        """
        n, b = len(self.folder), self.batch_size
        order = (np.random.default_rng((self.seed, epoch)).permutation(n) if self.train
                 else np.arange(n))
        lo, hi = rows.indices(b)[:2]
        decode = self._decoder(epoch)
        steps = self.steps_per_epoch
        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:

            def submit(k: int) -> list:
                return [(pos, pool.submit(decode, int(order[pos])))
                        for pos in range(k * b + lo, min(k * b + hi, n))]

            pending = collections.deque(submit(k) for k in range(min(2, steps)))
            for k in range(steps):
                futures = pending.popleft()
                if k + 2 < steps:  # bounded look-ahead: two batches in flight
                    pending.append(submit(k + 2))
                images = np.zeros((hi - lo, self.image_size, self.image_size, 3), np.uint8)
                labels = np.zeros((hi - lo,), np.int32)
                mask = np.zeros((hi - lo,), np.float32)
                for i, (pos, future) in enumerate(futures):
                    image, index = future.result(), int(order[pos])
                    if image is None and self.train:
                        image, index = self._replacement(order, k, pos, decode)
                    if image is not None:
                        images[i], labels[i], mask[i] = image, self.folder.labels[index], 1.0
                batch: Batch = {"image": images, "label": labels}
                if not self.train:
                    batch["mask"] = mask  # padding and unreadable images count 0
                yield batch

    def _replacement(self, order: np.ndarray, k: int, pos: int,
                     decode: Callable[[int], np.ndarray | None]) -> tuple[np.ndarray, int]:
        """A training image that cannot be read is replaced by the next readable one of the
        same global batch (wrapping around), whichever process reads it."""
        b = self.batch_size
        for d in range(1, b):
            index = int(order[k * b + (pos - k * b + d) % b])
            image = decode(index)
            if image is not None:
                return image, index
        raise DatasetError(f"Every image of training batch {k} is unreadable (see the log for "
                           "their paths); check the data.")


# -- Fashion-MNIST (IDX files) ----------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped), as used by MNIST and Fashion-MNIST.

    Returns:
      a uint8 array of the shape given in the header.

    Raises:
      DatasetError: missing file, or a header that is not an unsigned-byte IDX header.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"IDX file {path!r} does not exist. Install the Debian package "
                           "dataset-fashion-mnist or pass --data_dir with the four IDX files.")
    opener: Any = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path!r} is not an unsigned-byte IDX file (header {data[:4]!r}).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 1
    if len(data) - offset != expected:
        raise DatasetError(f"{path!r} is truncated: header says {dims} ({expected} bytes), "
                           f"found {len(data) - offset} bytes.")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def load_idx_dataset(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (or MNIST) ``split`` (``'train'``/``'test'``) from ``data_dir``.

    Returns:
      ``(images uint8[N, 28, 28, 1], labels int32[N])``.
    """
    prefix = "train" if split == "train" else "t10k"
    paths = [os.path.join(data_dir, f"{prefix}-{kind}-idx{n}-ubyte") for kind, n in
             (("images", 3), ("labels", 1))]
    paths = [p + ".gz" if not os.path.isfile(p) else p for p in paths]
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DatasetError(f"IDX files in {data_dir!r} disagree: images {images.shape}, "
                           f"labels {labels.shape}.")
    return images[..., None], labels.astype(np.int32)


class ArrayPipeline:
    """Batches from in-memory arrays, with the same interface as ``ImageFolderPipeline``.

    Training batches are a fresh permutation each epoch, randomly flipped left-right and
    shifted by up to ``pad`` pixels (zero padding), the usual augmentation for 28x28 data.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 batch_size: int, train: bool, seed: int = 0, pad: int = 2):
        if train and len(images) < batch_size:
            raise DatasetError(f"{len(images)} images are fewer than one batch of {batch_size}.")
        self.images, self.labels = images, labels
        self._num_classes = num_classes
        self.batch_size, self.train, self.seed, self.pad = batch_size, train, seed, pad
        self.skipped = SkipCounter()

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, epoch: int = 0, rows: slice = slice(None)) -> Iterator[Batch]:
        """One epoch of batches; ``rows``: this process's rows of every global batch."""
        n, b = len(self.images), self.batch_size
        if not self.train:
            for start in range(0, n, b):
                idx = np.arange(start, min(start + b, n))
                mask = np.zeros((b,), np.float32)
                mask[: len(idx)] = 1.0
                idx = np.pad(idx, (0, b - len(idx)))[rows]
                yield {"image": self.images[idx], "label": self.labels[idx],
                       "mask": mask[rows]}
            return
        rng = np.random.default_rng((self.seed, epoch))
        order = rng.permutation(n)
        p = self.pad
        for step in range(self.steps_per_epoch):
            # The augmentation is drawn for the whole global batch, then cut to our rows.
            dy, dx = (a[rows] for a in rng.integers(0, 2 * p + 1, size=(2, b)))
            flip = (rng.uniform(size=b) < 0.5)[rows]
            idx = order[step * b: (step + 1) * b][rows]
            images = self.images[idx]
            h, w = images.shape[1:3]
            padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
            out = np.empty_like(images)
            for i in range(len(idx)):
                crop = padded[i, dy[i]: dy[i] + h, dx[i]: dx[i] + w]
                out[i] = crop[:, ::-1] if flip[i] else crop
            yield {"image": out, "label": self.labels[idx]}


# -- Synthetic data for tests and smoke runs --------------------------------------------


def write_synthetic_image_folder(root: str, num_classes: int = 3, per_class: int = 8,
                                 splits: Sequence[str] = ("train", "val"),
                                 size: tuple[int, int] = (40, 48), seed: int = 0) -> str:
    """Writes small JPEGs in the ImageNet layout: ``root/<split>/c<k>/img<i>.JPEG``.

    Class ``k`` is a noisy image with its own mean colour, so a network can learn the classes
    in a few steps. Image sizes vary a little around ``size`` (width, height) so that the
    crops see different aspect ratios. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    palette = rng.uniform(30, 225, size=(num_classes, 3))
    for split in splits:
        for k in range(num_classes):
            folder = os.path.join(root, split, f"c{k:03d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                w = size[0] + int(rng.integers(-4, 5))
                h = size[1] + int(rng.integers(-4, 5))
                pixels = palette[k] + rng.normal(0, 25, size=(h, w, 3))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
                image.save(os.path.join(folder, f"img{i:04d}.JPEG"), quality=90)
    return root


# -- On the device ----------------------------------------------------------------------


def normalize(images: jax.Array, mean: Sequence[float], stddev: Sequence[float],
              dtype: Any = jnp.float32) -> jax.Array:
    """``(images - mean) / stddev`` per channel, computed in float32, returned in ``dtype``.

    Args:
      images: ``uint8[..., C]`` pixels (0..255).
      mean, stddev: C per-channel values in the same 0..255 scale.
      dtype: the dtype of the result (e.g. bfloat16 for half-precision training).
    """
    x = images.astype(jnp.float32)
    shape = (1,) * (x.ndim - 1) + (-1,)
    m = jnp.asarray(mean, jnp.float32).reshape(shape)
    s = jnp.asarray(stddev, jnp.float32).reshape(shape)
    return ((x - m) / s).astype(dtype)


def background(iterator: Iterator[Any], size: int = 2) -> Iterator[Any]:
    """Runs ``iterator`` on a background thread, ``size`` items ahead of the consumer.

    Exceptions raised by the iterator are re-raised in the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def put(entry: tuple[Any, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put((None, item)):
                    return
            put((None, done))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((e, None))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            error, item = q.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
