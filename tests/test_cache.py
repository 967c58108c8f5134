"""The decode-once cache: building (atomic, resumable, stale detection), reading it through the
dataset (exact for npy, JPEG-close for jpeg) and determinism of the cached path."""
import os
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from imet.cli import main
from imet.data.images import (
    MANIFEST,
    ImageCache,
    build_cache,
    find_cache,
    load_rgb,
    scale_short_side,
)
from imet.data.transforms import (
    ImetDataset,
    build_batch_augment,
    build_eval_transform,
    build_train_transform,
)

SIZE = 32


@pytest.fixture(scope="module")
def npy_cache(mini_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "npy"
    build_cache(mini_data, out, SIZE, "npy", workers=1, progress=False)
    return ImageCache(out)


@pytest.fixture(scope="module")
def jpeg_cache(mini_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "jpeg"
    result = build_cache(mini_data, out, SIZE, "jpeg", quality=95, workers=2, progress=False)
    assert result.built == result.total == 64 + 24 and not result.errors
    return ImageCache(out)


def _batches(dataset, order, num_workers, epoch):
    dataset.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=8, sampler=order, num_workers=num_workers)
    return [batch for batch in loader]


def _equal(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        torch.equal(x, y) for a, b in zip(batches_a, batches_b) for x, y in zip(a, b))


def test_npy_cache_equals_direct_decode_and_resize_exactly(train_items, npy_cache):
    paths = train_items[0]
    first_step = build_eval_transform(SIZE, "seed").transforms[0]  # SmallestMaxSize
    cached = npy_cache.resolve(paths)
    assert cached.hits == len(paths)
    for i in (0, 7, 63):
        expected = first_step(image=load_rgb(paths[i]))["image"]
        assert min(expected.shape[:2]) == SIZE
        np.testing.assert_array_equal(cached.load(i), expected)
    # Enlarging too (iMet's 300 px short side under a 320 px training size).
    enlarge = build_eval_transform(64, "seed").transforms[0]
    image = np.random.default_rng(0).integers(0, 256, (48, 71, 3), dtype=np.uint8)
    np.testing.assert_array_equal(scale_short_side(image, 64), enlarge(image=image)["image"])


def test_jpeg_cache_is_close_to_direct_decode_and_resize(train_items, jpeg_cache):
    cached = jpeg_cache.resolve(train_items[0])
    for i in range(0, 64, 9):
        expected = scale_short_side(load_rgb(train_items[0][i]), SIZE).astype(np.int16)
        got = cached.load(i).astype(np.int16)
        assert got.shape == expected.shape
        # q95 on tiny synthetic images: a few grey levels on average.
        assert np.abs(got - expected).mean() < 4.0


def test_seed_preset_through_npy_cache_is_bit_identical_to_the_source_path(train_items,
                                                                          npy_cache):
    """Resizing first (in the cache) changes nothing: SmallestMaxSize becomes a no-op and the
    random crop and flip, and the per-batch parameters, come from the same (seed, epoch, i)."""
    paths, targets = train_items
    direct = ImetDataset(paths, targets, build_train_transform("seed", SIZE), seed=5,
                         normalize=None, batch_augment=build_batch_augment("seed", SIZE))
    cached = ImetDataset(paths, targets, build_train_transform("seed", SIZE), seed=5,
                         normalize=None, cache=npy_cache,
                         batch_augment=build_batch_augment("seed", SIZE))
    order = list(range(16))
    assert _equal(_batches(direct, order, 0, 2), _batches(cached, order, 0, 2))


def test_cached_batches_identical_across_workers_and_restart(train_items, jpeg_cache):
    paths, targets = train_items
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3)).tolist()

    def fresh():
        return ImetDataset(paths, targets, build_train_transform("seed", SIZE), seed=9,
                           normalize=None, cache=jpeg_cache,
                           batch_augment=build_batch_augment("seed", SIZE))

    single = _batches(fresh(), order, 0, epoch=1)
    assert _equal(single, _batches(fresh(), order, 2, epoch=1))
    # A new process resuming after 3 batches of epoch 1 sees the remaining batches unchanged.
    assert _equal(single[3:], _batches(fresh(), order[24:], 2, epoch=1))
    assert not _equal(single, _batches(fresh(), order, 0, epoch=2))


def test_rebuild_reuses_fresh_entries_and_redoes_stale_missing_and_interrupted(mini_data_copy,
                                                                                tmp_path):
    out = tmp_path / "cache"
    first = build_cache(mini_data_copy, out, SIZE, "jpeg", workers=1, progress=False)
    assert first.built == 88 and first.reused == 0
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    train = sorted((mini_data_copy / "train").iterdir())
    changed, deleted = train[0], train[1]
    os.utime(changed, ns=(1, 1))  # same bytes, other mtime: stale
    deleted.unlink()
    # An interrupted build: files written, manifest not yet listing them.
    lost = sorted((out / "test").iterdir())[:5]
    for path in lost:
        path.unlink()
    half_written = out / "test" / f".{lost[0].name}.999.tmp"
    half_written.write_bytes(b"\xff\xd8")
    second = build_cache(mini_data_copy, out, SIZE, "jpeg", workers=1, progress=False)
    assert (second.built, second.reused, second.removed) == (1 + 5, 87 - 6, 1)
    assert not (out / "train" / deleted.with_suffix(".jpg").name).exists()
    assert not half_written.exists()
    os.utime(changed, ns=(2, 2))  # changed after the cache was built: the dataset notices
    cache = ImageCache(out)
    with pytest.warns(UserWarning, match="1 of 2 images are not cached or changed since"):
        cached = cache.resolve([changed, train[2]])
    assert cached.cached[0] is None and cached.cached[1] is not None
    np.testing.assert_array_equal(cached.load(0), load_rgb(changed))  # falls back to the source


def test_other_settings_rebuild_everything_and_leave_no_stale_files(mini_data, tmp_path):
    out = tmp_path / "cache"
    build_cache(mini_data, out, SIZE, "jpeg", workers=1, splits=("test",), progress=False)
    result = build_cache(mini_data, out, SIZE, "npy", workers=1, splits=("test",),
                         progress=False)
    assert result.built == 24 and not list(out.rglob("*.jpg"))
    assert find_cache(SIZE, [tmp_path]).image_format == "npy"
    assert find_cache(SIZE + 1, [tmp_path]) is None


def test_cli_builds_and_reports_errors_in_one_line(mini_data, mini_data_copy, tmp_path, capsys):
    assert main(["cache", "--data", str(mini_data), "--size", "24", "--out",
                 str(tmp_path / "c"), "--split", "test", "--workers", "1",
                 "--no-progress"]) == 0
    assert "24 of 24 images cached at short side 24 (jpeg)" in capsys.readouterr().out
    assert (tmp_path / "c" / MANIFEST).is_file()
    assert main(["cache", "--data", str(tmp_path / "nowhere"), "--size", "24", "--out",
                 str(tmp_path / "d"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imet cache: error:") and "nowhere" in err and "\n" not in err
    broken = sorted((mini_data_copy / "test").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["cache", "--data", str(mini_data_copy), "--size", "24", "--out",
                     str(tmp_path / "e"), "--split", "test", "--workers", "1",
                     "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "1 images could not be cached" in err and broken.name in err


def test_a_training_image_below_the_minimum_side_is_not_cached(mini_data_copy, tmp_path):
    """The cache would scale a 1x1 placeholder up and hide it from training's check: it is
    reported instead, and training then reads (and refuses) the source."""
    from PIL import Image

    victim = sorted((mini_data_copy / "train").iterdir())[2]
    Image.new("RGB", (1, 1)).save(victim)
    result = build_cache(mini_data_copy, tmp_path / "cache", SIZE, "jpeg", workers=1,
                         splits=("train",), progress=False)
    assert result.errors == [f"{victim}: image is 1x1 px, its shorter side below the minimum "
                             "of 16 px; re-download the image or remove its row from the CSV"]
    assert result.built == result.total - 1


def test_a_cache_of_the_2021_layout_serves_its_nested_folders(mini_data_2021, tmp_path, capsys):
    from imet.data.labels import find_layout, read_sample_submission, read_train, read_labels
    out = tmp_path / "cache"
    assert main(["cache", "--data", str(mini_data_2021), "--size", str(SIZE), "--out", str(out),
                 "--workers", "1", "--no-progress"]) == 0
    assert "88 of 88 images cached" in capsys.readouterr().out
    layout = find_layout(mini_data_2021)
    ids, _ = read_train(layout.train_csv, read_labels(layout.labels_csv))
    paths = layout.image_paths("train", ids) + layout.image_paths(
        "test", read_sample_submission(layout.sample_submission_csv))
    assert ImageCache(out).resolve(paths).hits == 88
