"""How long writing one 512x512 RGB image to TensorBoard blocks a training step.

Run: ``python -m benchmarks.metrics_image`` (prints one line per case; medians of 7 calls).
Cases: the CRC32C in pure Python and in the compiled package (``CRC32C_BACKEND``), and the
time the caller waits when the write goes through an ``AsyncWriter``. Two images: random
pixels (PNG barely compresses them: about 0.8 MB) and a smooth gradient (compresses well).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from flaxen import metrics
from flaxen.metrics import tfrecord

REPEATS = 7


def median_ms(fn: Callable[[int], None]) -> float:
    fn(-1)  # warm-up
    times = []
    for i in range(REPEATS):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:512, 0:512] / 511.0
    smooth = np.stack([x, y, (x + y) / 2], axis=-1).astype(np.float32)
    return {"random": rng.random((512, 512, 3), dtype=np.float32), "smooth": smooth}


def main() -> None:
    compiled = tfrecord._crc_impl
    for name, image in images().items():
        png_size = len(metrics.tensorboard.encode_png(np.round(image * 255).astype(np.uint8)))
        for backend, impl in [("python", tfrecord.crc32c_python), (tfrecord.CRC32C_BACKEND,
                                                                     compiled)]:
            tfrecord._crc_impl = impl
            with metrics.SummaryWriter(tempfile.mkdtemp()) as w:
                blocked = median_ms(lambda i, w=w, x=image: w.write_images(i, {"x": x}))
            crc = median_ms(lambda i, n=png_size: tfrecord.crc32c(bytes(n)))
            print(f"{name:6s} image, PNG {png_size / 1e6:.2f} MB, CRC {backend:13s}: "
                  f"write_images blocks {blocked:7.1f} ms (of which CRC {crc:6.2f} ms)")
        tfrecord._crc_impl = compiled
        writer = metrics.AsyncWriter(metrics.SummaryWriter(tempfile.mkdtemp()), max_pending=64)
        blocked = median_ms(lambda i, w=writer, x=image: w.write_images(i, {"x": x}))
        writer.close()
        print(f"{name:6s} image, AsyncWriter over SummaryWriter: the caller waits {blocked:.2f} ms")


if __name__ == "__main__":
    main()
