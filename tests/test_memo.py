"""Decode once in memory (imet.data.images): the batches of every epoch are those of a dataset
that decodes every image each time, whatever part of the data set the budget holds."""
import pytest
import torch

from imet.data.images import PixelMemo
from imet.data.transforms import (
    ImetDataset,
    build_batch_augment,
    build_eval_transform,
    build_train_transform,
)

SIZE = 32


def _train_set(train_items, memo=None, preset="resize"):
    paths, targets = train_items
    return ImetDataset(paths, targets, build_train_transform(preset, SIZE), seed=5,
                       normalize=None, batch_augment=build_batch_augment(preset, SIZE, 0.5),
                       memo=memo)


def _epochs(dataset, epochs=3):
    return [[dataset[(epoch, i)] for i in range(len(dataset))] for epoch in range(epochs)]


def _assert_same(actual, expected):
    for epoch_a, epoch_e in zip(actual, expected):
        for item_a, item_e in zip(epoch_a, epoch_e):
            for a, e in zip(item_a, item_e):
                assert torch.equal(torch.as_tensor(a), torch.as_tensor(e))


@pytest.mark.parametrize("preset", ["resize", "seed"])
def test_training_batches_are_the_same_with_any_budget(train_items, preset):
    decoded = _epochs(_train_set(train_items, preset=preset))
    everything = PixelMemo(1 << 30)
    _assert_same(_epochs(_train_set(train_items, everything, preset)), decoded)
    assert len(everything) == len(train_items[0])
    part = PixelMemo(everything.held_bytes // 3)
    _assert_same(_epochs(_train_set(train_items, part, preset)), decoded)
    assert 0 < len(part) < len(train_items[0]) and part.held_bytes <= part.budget_bytes


def test_validation_keeps_the_eval_transform_output(train_items):
    paths, targets = train_items
    plain = ImetDataset(paths, targets, build_eval_transform(SIZE), normalize=None)
    memo = PixelMemo(1 << 30)
    kept = ImetDataset(paths, targets, build_eval_transform(SIZE), normalize=None, memo=memo,
                       memo_transformed=True)
    _assert_same(_epochs(kept, 2), _epochs(plain, 2))
    assert memo.held_bytes == len(paths) * SIZE * SIZE * 3  # resized pixels, not the sources


def test_kept_pixels_cannot_be_changed_in_place(train_items):
    paths, targets = train_items

    def darken(image, rng):
        image[:] //= 2
        return image

    dataset = ImetDataset(paths, targets, darken, normalize=None, memo=PixelMemo(1 << 30))
    with pytest.raises(ValueError, match="read-only"):
        dataset[0]


def test_a_worker_starts_with_an_empty_memo(train_items):
    import pickle

    memo = PixelMemo(1 << 30)
    _epochs(_train_set(train_items, memo), 1)
    copy = pickle.loads(pickle.dumps(memo))
    assert len(memo) and (len(copy), copy.held_bytes, copy.budget_bytes) == (0, 0, 1 << 30)


def test_memo_after_the_transform_refuses_a_batch_augment(train_items):
    paths, targets = train_items
    with pytest.raises(ValueError, match="batch_augment"):
        ImetDataset(paths, targets, build_eval_transform(SIZE), normalize=None,
                    batch_augment=build_batch_augment("seed", SIZE), memo=PixelMemo(1),
                    memo_transformed=True)
