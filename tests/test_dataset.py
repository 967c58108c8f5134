import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from imet.data.dataset import ImetDataset
from imet.data.labels import read_labels, read_train
from imet.data.layout import CompetitionLayout
from imet.data.transforms import build_eval_transform, build_train_transform
from imet.errors import DataError

SIZE = 32


def _dataset(train_items, seed=3, preset="seed", **kwargs):
    paths, targets = train_items
    return ImetDataset(paths, targets, build_train_transform(preset, SIZE), seed=seed, **kwargs)


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
    dataset = _dataset(train_items)
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
    uninterrupted = _dataset(train_items)
    uninterrupted.set_epoch(2)
    order = _order(2, len(uninterrupted))
    full = _batches(uninterrupted, order, 0)

    resumed = _dataset(train_items)
    resumed.set_epoch(2)
    tail = _batches(resumed, order[3 * 8:], 0)
    for a, b in zip(full[3:], tail):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_augmentation_changes_with_epoch_and_seed(train_items):
    dataset = _dataset(train_items)
    first = dataset[0][0]
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0][0])
    assert torch.equal(dataset[0][0], dataset[(1, 0)][0])
    assert torch.equal(first, dataset[(0, 0)][0])
    other_seed = _dataset(train_items, seed=4)
    assert not torch.equal(first, other_seed[0][0])


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
    dataset = _dataset(train_items)
    n = len(dataset)
    epochs = [1, 2]
    batches = [[(e, i) for i in _order(e, n)[k:k + 8]] for e in epochs for k in range(0, 32, 8)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=2, persistent_workers=True)
    for _ in range(2):  # the second pass reuses the same workers
        for keys, (images, _, indices) in zip(batches, loader):
            epoch = keys[0][0]
            dataset.set_epoch(epoch)
            expected = torch.stack([dataset[i][0] for _, i in keys])
            assert indices.tolist() == [i for _, i in keys]
            assert torch.equal(images, expected)
