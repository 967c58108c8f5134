import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from imet.data.labels import CompetitionLayout, read_labels, read_train
from imet.data.transforms import (
    ImetDataset,
    build_batch_augment,
    build_eval_transform,
    build_train_transform,
)
from imet.errors import DataError

SIZE = 32


def _dataset(train_items, seed=3, preset="seed", **kwargs):
    paths, targets = train_items
    return ImetDataset(paths, targets, build_train_transform(preset, SIZE), seed=seed, **kwargs)


def _augmented(train_items, seed=3):
    """The training set as the engine builds it: per-image crop + per-batch parameters."""
    return _dataset(train_items, seed, normalize=None,
                    batch_augment=build_batch_augment("seed", SIZE))


def _order(epoch, n):
    return torch.randperm(n, generator=torch.Generator().manual_seed(100 + epoch)).tolist()


def _batches(dataset, indices, num_workers):
    loader = DataLoader(dataset, batch_size=8, sampler=indices, num_workers=num_workers)
    return [batch for batch in loader]


def test_item_shapes_and_types(train_items):
    dataset = _dataset(train_items)
    image, target, index = dataset[5]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert target.dtype == torch.float32 and torch.equal(target, torch.from_numpy(
        train_items[1][5].astype(np.float32)))
    assert index == 5 and len(dataset) == len(train_items[0])
    assert -3 < image.min() < image.max() < 3  # normalized, not 0..255


def test_batches_identical_whatever_num_workers(train_items):
    dataset = _augmented(train_items)
    dataset.set_epoch(1)
    order = _order(1, len(dataset))
    single = _batches(dataset, order, 0)
    multi = _batches(dataset, order, 2)
    assert len(single) == len(multi) == len(dataset) // 8
    for a, b in zip(single, multi):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_restarted_epoch_continues_the_same_stream(train_items):
    """A session that stops after 3 batches of epoch 2 and a fresh process that resumes there
    (new dataset object, nothing but seed/epoch/position carried over) see the same samples."""
    uninterrupted = _augmented(train_items)
    uninterrupted.set_epoch(2)
    order = _order(2, len(uninterrupted))
    full = _batches(uninterrupted, order, 0)

    resumed = _augmented(train_items)
    resumed.set_epoch(2)
    tail = _batches(resumed, order[3 * 8:], 0)
    for a, b in zip(full[3:], tail):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_augmentation_changes_with_epoch_and_seed(train_items):
    def augmented(dataset, key):
        """The sample as the device sees it: per-image step, then per-batch part."""
        from imet.data.transforms import augment_batch

        image, _, _, params = dataset[key]
        return augment_batch(image[None], params[None])[0]

    dataset = _augmented(train_items)
    firsts = [augmented(dataset, i) for i in range(8)]
    dataset.set_epoch(1)
    assert not any(torch.equal(f, augmented(dataset, i)) for i, f in enumerate(firsts))
    assert torch.equal(augmented(dataset, 0), augmented(dataset, (1, 0)))
    assert torch.equal(firsts[0], augmented(dataset, (0, 0)))
    other_seed = _augmented(train_items, seed=4)
    assert not any(torch.equal(f, augmented(other_seed, i)) for i, f in enumerate(firsts))


def test_without_targets_gives_zero_targets(train_items):
    paths, _ = train_items
    dataset = ImetDataset(paths, None, build_eval_transform(SIZE), seed=0, num_classes=7)
    image, target, index = dataset[2]
    assert torch.equal(target, torch.zeros(7)) and index == 2


def test_uint8_output_for_gpu_normalization(train_items):
    dataset = _dataset(train_items, normalize=None)
    image = dataset[1][0]
    assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)


def test_corrupt_image_names_the_file(mini_data_copy):
    layout = CompetitionLayout(mini_data_copy)
    ids, targets = read_train(layout.train_csv, read_labels(layout.labels_csv))
    paths = layout.image_paths("train", ids)
    paths[0].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = ImetDataset(paths, targets, build_eval_transform(SIZE), seed=0)
    with pytest.raises(DataError, match=paths[0].name):
        dataset[0]


def test_rejects_mismatched_targets_and_bad_index(train_items):
    paths, targets = train_items
    with pytest.raises(ValueError, match="targets"):
        ImetDataset(paths, targets[:3], None, seed=0)
    with pytest.raises(IndexError):
        ImetDataset(paths, targets, None, seed=0)[len(paths)]


def test_persistent_workers_with_epoch_keys(train_items):
    """Persistent workers keep their own dataset copy (set_epoch never reaches them): a batch
    sampler yielding (epoch, index) keys keeps every epoch exact."""
    dataset = _augmented(train_items)
    n = len(dataset)
    epochs = [1, 2]
    batches = [[(e, i) for i in _order(e, n)[k:k + 8]] for e in epochs for k in range(0, 32, 8)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=2, persistent_workers=True)
    for _ in range(2):  # the second pass reuses the same workers
        for keys, (images, _, indices, params) in zip(batches, loader):
            epoch = keys[0][0]
            dataset.set_epoch(epoch)
            assert indices.tolist() == [i for _, i in keys]
            assert torch.equal(images, torch.stack([dataset[i][0] for _, i in keys]))
            assert torch.equal(params, torch.stack([dataset[i][3] for _, i in keys]))


def test_batch_augment_parameters_travel_with_each_sample(train_items):
    """The fourth item is the sample's parameter row: a function of (seed, epoch, index) only,
    the same through any number of workers, drawn after the crop from the same generator (so
    the image is the same with or without the per-batch part)."""
    from imet.data.transforms import FLIP, IDENTITY, PARAMS, augment_batch

    spec = build_batch_augment("seed", SIZE)
    dataset = _dataset(train_items, normalize=None, batch_augment=spec)
    image, target, index, params = dataset[(2, 5)]
    assert image.dtype == torch.uint8 and index == 5
    assert params.dtype == torch.float64 and params.shape == (PARAMS,)
    assert torch.equal(params, dataset[(2, 5)][3])
    rows = torch.stack([dataset[(2, i)][3] for i in range(len(dataset))])
    # Rows with a continuous parameter drawn (not only a flip) are all different.
    drawn = [tuple(r.tolist()) for r in rows
             if not np.array_equal(np.delete(r.numpy(), FLIP), np.delete(IDENTITY, FLIP))]
    assert len(drawn) > len(dataset) // 2 and len(set(drawn)) == len(drawn)
    assert not torch.equal(rows, torch.stack([dataset[(3, i)][3] for i in range(len(dataset))]))
    # The per-image stream is the same with or without the per-batch part.
    plain = _dataset(train_items, normalize=None)
    assert torch.equal(plain[(2, 5)][0], image)
    dataset.set_epoch(2)
    order = _order(2, len(dataset))
    single, multi = _batches(dataset, order, 0), _batches(dataset, order, 2)
    for a, b in zip(single, multi):
        assert len(a) == 4 and all(torch.equal(x, y) for x, y in zip(a, b))
    augmented = augment_batch(single[0][0], single[0][3])
    assert augmented.shape == single[0][0].shape and augmented.dtype == torch.float32
    with pytest.raises(ValueError, match="normalize=None"):
        _dataset(train_items, batch_augment=spec)
