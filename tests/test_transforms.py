import numpy as np
import pytest
import torch

from imet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRAIN_PRESETS,
    TTA,
    AlbumentationsStep,
    CropToAspect,
    Normalization,
    RandomSquareCrop,
    apply_tta,
    augment_batch,
    build_batch_augment,
    build_eval_transform,
    build_train_transform,
    collate,
    normalize_batch,
    to_tensor,
)
from imet.errors import UserError

SHAPES = [(48, 48), (40, 100), (130, 30), (20, 25), (300, 200)]


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rng(seed):
    return np.random.default_rng(seed)


def _ramp(h, w):
    """Left-to-right ramp: a horizontal flip is visible as a reversed ramp."""
    row = np.linspace(0, 255, w).astype(np.uint8)
    return np.repeat(np.repeat(row[None, :, None], h, 0), 3, 2)


def test_presets_registered():
    assert {"seed", "resize"} <= set(TRAIN_PRESETS)
    assert set(TTA) == {"none", "hflip"}


@pytest.mark.parametrize("preset", sorted(TRAIN_PRESETS))
@pytest.mark.parametrize("shape", SHAPES)
def test_output_is_square_uint8_of_size(preset, shape):
    image = _image(*shape)
    for out in (build_train_transform(preset, 32)(image, _rng(1)),
                build_eval_transform(32, preset)(image=image)["image"]):
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("preset", sorted(TRAIN_PRESETS))
def test_train_transform_depends_on_seed_only(preset):
    image = _image(90, 60)
    transform = build_train_transform(preset, 32)
    outputs = [transform(image, _rng(seed)) for seed in [5, 6, 5, 7, 8]]
    assert np.array_equal(outputs[0], outputs[2])
    assert not all(np.array_equal(outputs[0], o) for o in outputs[3:] + [outputs[1]])


def test_seeded_steps_fire_independently():
    # Compose.set_random_seed would seed each step identically (flip and brightness always
    # together); AlbumentationsStep shares one stream, so all four combinations occur.
    import albumentations as A

    transform = AlbumentationsStep(A.Compose([A.HorizontalFlip(p=0.5),
                                              A.RandomBrightnessContrast(p=0.5)]))
    image = _ramp(8, 16)
    combos = set()
    for seed in range(64):
        out = transform(image, _rng(seed))
        flipped = out[0, 0, 0] > out[0, -1, 0]
        brightness_changed = not (np.array_equal(out, image) or np.array_equal(out, image[:, ::-1]))
        combos.add((bool(flipped), brightness_changed))
    assert len(combos) == 4


def test_resize_preset_flips_about_half_the_time():
    transform = build_train_transform("resize", 16)
    image = _ramp(16, 16)
    flips = 0
    for seed in range(200):
        out = transform(image, _rng(seed))
        flips += int(out[0, 0, 0] > out[0, -1, 0])
    assert 70 < flips < 130


def test_eval_transform_is_deterministic_and_never_flips():
    image = _ramp(40, 70)
    transform = build_eval_transform(32, "resize")
    outs = [transform(image=image)["image"] for _ in range(5)]
    assert all(np.array_equal(outs[0], o) for o in outs)
    assert outs[0][0, 0, 0] < outs[0][0, -1, 0]


def test_crop_to_aspect_crops_only_extreme_images():
    transform = CropToAspect(2.0, random_position=True)
    wide = _ramp(50, 400)
    windows = set()
    for seed in range(10):
        seed_transform_single(transform, seed)
        out = transform(image=wide)["image"]
        assert out.shape == (50, 100, 3)
        windows.add(int(out[0, 0, 0]))
    assert len(windows) > 1
    tall = _image(300, 60)
    assert transform(image=tall)["image"].shape == (120, 60, 3)
    mild = _image(50, 90)
    assert transform(image=mild)["image"] is mild
    centred = CropToAspect(2.0, random_position=False)(image=np.arange(12).reshape(1, 12, 1)
                                                        .astype(np.uint8))["image"]
    assert centred.ravel().tolist() == [5, 6]


def seed_transform_single(transform, seed):
    import random

    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def test_to_tensor_normalizes_with_imagenet_stats():
    mean_pixel = (np.array(IMAGENET_MEAN) * 255).round().astype(np.uint8)
    image = np.broadcast_to(mean_pixel, (4, 5, 3)).copy()
    tensor = to_tensor(image)
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32
    assert tensor.abs().max().item() < 0.01
    white = to_tensor(np.full((2, 2, 3), 255, np.uint8))
    expected = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.allclose(white[:, 0, 0].numpy(), expected, atol=1e-5)


def test_uint8_path_then_batch_normalize_equals_to_tensor():
    image = _image(6, 7)
    raw = to_tensor(image, None)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 6, 7)
    norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(normalize_batch(raw[None], norm)[0], to_tensor(image, norm), atol=1e-5)
    floats = torch.zeros(1, 3, 2, 2)
    assert normalize_batch(floats) is floats
    pixels = raw[None].float()
    assert torch.allclose(norm.apply(pixels), norm.apply(raw[None]))
    in_place = norm.apply_(pixels)
    assert in_place is pixels and torch.allclose(in_place, to_tensor(image, norm)[None], atol=1e-5)


def test_the_uint8_hand_off_is_a_view_collated_as_it_lies_and_made_nchw_on_the_device():
    # Crops of wider images, as the seed preset cuts them: the item is a view of the decoded
    # pixels, the batch NHWC in memory; values, and what the device makes of them, are those of
    # contiguous CHW images stacked.
    images = [_image(20, 31, seed) for seed in range(4)]
    crops = [image[2:18, 5 + k:21 + k] for k, image in enumerate(images)]
    spec = build_batch_augment("seed", 16)
    items = [(to_tensor(crop, None), torch.zeros(3), k,
              torch.from_numpy(spec.draw(_rng(k), (3, 16, 16)))) for k, crop in enumerate(crops)]
    assert np.shares_memory(items[0][0].numpy(), images[0])
    batch = collate(items)
    plain = torch.stack([torch.from_numpy(np.ascontiguousarray(c.transpose(2, 0, 1)))
                         for c in crops])
    assert batch[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch[0], plain) and batch[2].tolist() == [0, 1, 2, 3]
    for ours, theirs in [(augment_batch(batch[0], batch[3]), augment_batch(plain, batch[3])),
                         (Normalization().apply(batch[0]), Normalization().apply(plain))]:
        assert ours.is_contiguous() and torch.equal(ours, theirs)
    kept = crops[0].copy()
    kept.flags.writeable = False  # a memo's pixels: copied, never shared with a batch
    assert not np.shares_memory(to_tensor(kept, None).numpy(), kept)


def test_normalization_from_model_info():
    norm = Normalization.from_info({"mean": [0.5] * 3, "std": [1.0] * 3, "input_range": [0, 255]})
    assert norm.max_value == 255.0
    assert to_tensor(np.full((1, 1, 3), 255, np.uint8), norm)[0, 0, 0].item() == \
        pytest.approx(254.5)


def test_tta_views_on_nchw_batches():
    batch = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    assert torch.equal(apply_tta("none", batch), batch)
    flipped = apply_tta("hflip", batch)
    assert torch.equal(flipped[..., 0], batch[..., -1])
    assert torch.equal(apply_tta("hflip", flipped), batch)
    with pytest.raises(UserError, match="unknown TTA 'vflip'"):
        apply_tta("vflip", batch)
    with pytest.raises(ValueError):
        apply_tta("hflip", batch[0])


def test_bad_preset_and_size_are_user_errors():
    with pytest.raises(UserError, match="unknown augmentation preset 'heavy'.*resize.*seed"):
        build_train_transform("heavy", 32)
    with pytest.raises(UserError, match="--image-size"):
        build_eval_transform(0)


def test_scaling_is_bilinear_up_and_area_averaging_down():
    halves = np.zeros((4, 4, 3), np.uint8)
    halves[:2] = 255
    column = build_eval_transform(8)(image=halves)["image"][:, 0, 0]
    assert 0 < column[3] < 255 and 0 < column[4] < 255  # a ramp, not nearest-neighbour blocks
    noise = _image(300, 300)
    small = build_eval_transform(100)(image=noise)["image"]
    # each output pixel averages a 3x3 block: the noise's std shrinks about 3-fold
    assert small.std() == pytest.approx(noise.std() / 3, rel=0.1)


def test_random_square_crop_scales_the_short_side_then_crops_anywhere():
    crop = RandomSquareCrop(32)
    wide = _ramp(40, 100)  # short side 40 -> 32, long side 80
    lefts = set()
    for seed in range(40):
        out = crop(wide, _rng(seed))
        assert out.shape == (32, 32, 3)
        lefts.add(int(out[0, 0, 0]))
    assert len(lefts) > 10  # many window positions along the long side
    cached = _image(32, 70)  # already at size: a view of the input, no copy
    out = crop(cached, _rng(0))
    assert np.shares_memory(out, cached)
    assert np.array_equal(crop(cached, _rng(3)), crop(cached, _rng(3)))
