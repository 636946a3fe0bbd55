"""Tests of the ImageNet input pipeline on small generated image folders."""

import gzip
import os

import numpy as np
import pytest
from PIL import Image

from examples.imagenet import input_pipeline as ip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagenet"))
    return ip.write_synthetic_image_folder(root, num_classes=3, per_class=5)


def test_folder_lists_classes_and_labels(data_dir):
    train = ip.ImageFolder(data_dir, "train")
    assert train.classes == ["c000", "c001", "c002"]
    assert len(train) == 15
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(3), 5))
    for path, label in zip(train.files, train.labels):
        assert os.path.basename(os.path.dirname(path)) == train.classes[label]


def test_missing_dir_is_clear_error(tmp_path):
    with pytest.raises(ip.DatasetError, match="does not exist.*--data_dir"):
        ip.ImageFolder(str(tmp_path / "nowhere"), "train")
    os.makedirs(tmp_path / "train")
    with pytest.raises(ip.DatasetError, match="no class sub-folders"):
        ip.ImageFolder(str(tmp_path), "train")


def test_empty_class_folder_is_clear_error(tmp_path):
    root = ip.write_synthetic_image_folder(str(tmp_path), num_classes=2, per_class=2,
                                           splits=("train",))
    os.makedirs(os.path.join(root, "train", "c_empty"))
    with pytest.raises(ip.DatasetError, match=r"1 class folder.*no images.*c_empty"):
        ip.ImageFolder(root, "train")


def test_val_class_not_in_train_is_error(tmp_path):
    root = ip.write_synthetic_image_folder(str(tmp_path), num_classes=2, per_class=2)
    os.rename(os.path.join(root, "val", "c001"), os.path.join(root, "val", "other"))
    train = ip.ImageFolder(root, "train")
    with pytest.raises(ip.DatasetError, match="other"):
        ip.ImageFolder(root, "val", classes=train.classes)


def test_random_resized_crop_box_within_image_and_range():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(200):
        w, h = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        left, top, right, bottom = ip.random_resized_crop_box(w, h, rng)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        areas.append((right - left) * (bottom - top) / (w * h))
    assert min(areas) >= 0.05 and max(areas) <= 1.0
    # Very elongated images fall back to the central crop with a clamped aspect ratio.
    box = ip.random_resized_crop_box(400, 10, rng, area_range=(0.99, 1.0), attempts=0)
    assert box == (193, 0, 206, 10)  # width round(10 * 4 / 3) = 13


def test_center_crop_box_is_standard_ratio():
    assert ip.center_crop_box(256, 320, 224) == (16, 48, 240, 272)


def test_eval_decoding_matches_manual_pillow(data_dir):
    path = ip.ImageFolder(data_dir, "val").files[0]
    got = ip.decode_eval(path, 16)
    with Image.open(path) as img:
        img = img.convert("RGB")
        side = round(min(img.size) * 16 / 48)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        want = np.asarray(img.resize((16, 16), Image.Resampling.BILINEAR,
                                     box=(left, top, left + side, top + side)))
    assert got.dtype == np.uint8 and got.shape == (16, 16, 3)
    np.testing.assert_array_equal(got, want)


def test_train_epoch_shapes_deterministic_and_shuffled(data_dir):
    folder = ip.ImageFolder(data_dir, "train")
    pipe = ip.ImageFolderPipeline(folder, batch_size=4, image_size=12, train=True, seed=1,
                                  num_workers=3)
    assert pipe.steps_per_epoch == 3
    batches = list(pipe.epoch(0))
    assert len(batches) == 3
    assert batches[0]["image"].shape == (4, 12, 12, 3)
    assert batches[0]["image"].dtype == np.uint8 and batches[0]["label"].dtype == np.int32
    # Same seed and epoch -> same batches whatever the number of threads.
    again = list(ip.ImageFolderPipeline(folder, 4, 12, True, seed=1, num_workers=1).epoch(0))
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other = list(pipe.epoch(1))
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(batches, other))


def test_eval_epoch_covers_all_with_mask(data_dir):
    folder = ip.ImageFolder(data_dir, "val")
    pipe = ip.ImageFolderPipeline(folder, batch_size=4, image_size=8, train=False)
    batches = list(pipe.epoch())
    assert len(batches) == pipe.steps_per_epoch == 4
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.sum() == 15 and mask[-1] == 0
    np.testing.assert_array_equal(labels[mask > 0], folder.labels)


def test_unreadable_image_is_skipped_and_counted(tmp_path, caplog):
    root = ip.write_synthetic_image_folder(str(tmp_path), num_classes=2, per_class=3,
                                           splits=("val",))
    bad = os.path.join(root, "val", "c001", "broken.JPEG")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg at all")
    folder = ip.ImageFolder(root, "val")
    assert len(folder) == 7
    pipe = ip.ImageFolderPipeline(folder, batch_size=4, image_size=8, train=False)
    batches = list(pipe.epoch())
    assert sum(b["mask"].sum() for b in batches) == 6
    assert pipe.skipped.count == 1 and pipe.skipped.paths == [bad]
    assert "broken.JPEG" in caplog.text


def test_idx_reader_round_trip_and_errors(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    path = str(tmp_path / "x-idx3-ubyte.gz")
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes())
    np.testing.assert_array_equal(ip.read_idx(path), images)
    with open(tmp_path / "short", "wb") as f:
        f.write(header + images.tobytes()[:-1])
    with pytest.raises(ip.DatasetError, match="truncated"):
        ip.read_idx(str(tmp_path / "short"))
    with pytest.raises(ip.DatasetError, match="does not exist"):
        ip.read_idx(str(tmp_path / "none"))


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_loads():
    images, labels = ip.load_idx_dataset("/usr/share/datasets/fashion-mnist", "test")
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


def test_array_pipeline_augments_and_pads():
    images = np.random.default_rng(0).integers(0, 255, (10, 6, 6, 1), dtype=np.uint8)
    labels = np.arange(10, dtype=np.int32)
    train = ip.ArrayPipeline(images, labels, 10, batch_size=4, train=True, pad=0)
    batches = list(train.epoch(0))
    assert len(batches) == 2
    for b in batches:  # with no shift, each image is the original or its mirror
        for img, lab in zip(b["image"], b["label"]):
            assert (np.array_equal(img, images[lab])
                    or np.array_equal(img, images[lab][:, ::-1]))
    evals = list(ip.ArrayPipeline(images, labels, 10, 4, train=False).epoch())
    assert [b["mask"].sum() for b in evals] == [4, 4, 2]


def test_normalize_against_numpy():
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
    got = ip.normalize(x, ip.MEAN_RGB, ip.STDDEV_RGB)
    want = (x.astype(np.float32) - np.array(ip.MEAN_RGB)) / np.array(ip.STDDEV_RGB)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_background_preserves_order_and_errors():
    assert list(ip.background(iter(range(10)), 3)) == list(range(10))

    def failing():
        yield 1
        raise RuntimeError("boom")

    it = ip.background(failing())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="boom"):
        next(it)
