import math

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from imet.data.transforms import (
    AFFINE,
    ALPHA,
    ANGLE,
    BANK_SIZE,
    BETA,
    FLIP,
    IDENTITY,
    OFFSET,
    PARAMS,
    SCALE_X,
    SCALE_Y,
    SHIFT_X,
    SHIFT_Y,
    SIGMA,
    TRAIN_PRESETS,
    BatchAugment,
    augment_batch,
    build_batch_augment,
    noise_bank,
    noise_bank_on,
)


def _smooth(h, w, seed=0):
    """A smooth colour image (bilinear sampling is then nearly exact), values 20..235."""
    rng = np.random.default_rng(seed)
    small = rng.integers(20, 236, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _batch(*images):
    return torch.from_numpy(np.stack([np.ascontiguousarray(i.transpose(2, 0, 1))
                                      for i in images]))


def _row(**values):
    row = IDENTITY.copy()
    for name, value in values.items():
        row[globals()[name.upper()]] = value
    return row


def _params(*rows):
    return torch.from_numpy(np.stack(rows))


def _forward_matrix(h, w, scale_x, scale_y, angle, shift_x, shift_y):
    """The warp as albumentations' Affine builds it (its own matrix function), in pixels,
    for cv2.warpAffine; the shift not rounded to whole pixels."""
    from albumentations.augmentations.geometric.functional import (
        create_affine_transformation_matrix,
    )

    matrix = create_affine_transformation_matrix(
        translate={"x": shift_x * w, "y": shift_y * h}, shear={"x": 0.0, "y": 0.0},
        scale={"x": scale_x, "y": scale_y}, rotate=angle, shift=((w - 1) / 2, (h - 1) / 2))
    return matrix[:2]


def test_identity_rows_leave_pixels_unchanged():
    images = _batch(_smooth(20, 30), _smooth(20, 30, 1))
    out = augment_batch(images, _params(IDENTITY, IDENTITY))
    assert out.dtype == torch.float32 and torch.equal(out, images.float())


def test_flip_mirrors_the_flipped_samples_only():
    a, b = _smooth(12, 20), _smooth(12, 20, 1)
    out = augment_batch(_batch(a, b), _params(_row(flip=1), IDENTITY))
    assert torch.equal(out[0], _batch(np.ascontiguousarray(a[:, ::-1]))[0].float())
    assert torch.equal(out[1], _batch(b)[0].float())


def test_brightness_contrast_is_albumentations_multiply_add():
    image = _smooth(24, 24)
    alpha, beta = 1.17, -0.12
    reference = A.RandomBrightnessContrast(p=1.0).apply(image, alpha=alpha, beta=beta * 255)
    out = augment_batch(_batch(image), _params(_row(alpha=alpha, beta=beta * 255)))
    diff = out[0].numpy().transpose(1, 2, 0) - reference
    assert np.abs(diff).max() <= 1.0  # albumentations rounds to uint8, we stay float
    saturated = augment_batch(_batch(np.full((4, 4, 3), 250, np.uint8)),
                              _params(_row(alpha=1.2, beta=30)))
    assert saturated.max().item() == 255.0  # clipped as uint8 arithmetic would


@pytest.mark.parametrize("shape", [(48, 48), (40, 64)])
@pytest.mark.parametrize("warp", [(1.0, 1.0, 12.0, 0.0, 0.0), (0.92, 1.08, -9.0, 0.05, -0.04),
                                  (1.1, 1.1, 0.0, -0.06, 0.03)])
def test_affine_matches_cv2_warp_affine_in_pixels(shape, warp):
    """The normalized-coordinate matrix handed to grid_sample is albumentations' pixel warp
    (rotation and per-axis scale about the centre, shift as a fraction of each side, same
    rotation direction), borders reflected, for square and non-square images."""
    h, w = shape
    image = _smooth(h, w, seed=3)
    reference = cv2.warpAffine(image.astype(np.float32), _forward_matrix(h, w, *warp), (w, h),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    scale_x, scale_y, angle, shift_x, shift_y = warp
    row = _row(affine=1, scale_x=scale_x, scale_y=scale_y, angle=angle, shift_x=shift_x,
               shift_y=shift_y)
    out = augment_batch(_batch(image, image), _params(row, IDENTITY))
    diff = np.abs(out[0].numpy().transpose(1, 2, 0) - reference)
    assert diff.mean() < 0.3 and diff.max() < 3.0
    assert torch.equal(out[1], _batch(image)[0].float())  # the unwarped sample is untouched


def test_noise_is_the_bank_window_scaled_and_clipped():
    flat = np.full((32, 32, 3), 128, np.uint8)
    out = augment_batch(_batch(flat, flat), _params(_row(sigma=10.0, offset=12345), IDENTITY))
    window = noise_bank()[12345:12345 + 3 * 32 * 32].reshape(3, 32, 32)
    expected = np.clip(128 + 10.0 * window, 0, 255)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-4)
    assert torch.equal(out[1], torch.full((3, 32, 32), 128.0))
    bright = augment_batch(_batch(np.full((8, 8, 3), 250, np.uint8)),
                           _params(_row(sigma=40.0, offset=0)))
    assert bright.max().item() == 255.0


def test_noise_bank_is_standard_normal_iid_and_the_same_everywhere():
    bank = noise_bank()
    assert bank.shape == (BANK_SIZE,) and bank.dtype == np.float32
    assert abs(bank.mean()) < 0.005 and abs(bank.std() - 1) < 0.005
    assert abs(np.corrcoef(bank[:-1], bank[1:])[0, 1]) < 0.005
    np.testing.assert_array_equal(noise_bank_on("cpu").numpy(), bank)
    assert noise_bank_on("cpu") is noise_bank_on(torch.device("cpu"))


def test_draw_follows_the_seed_kernel_distributions():
    spec = build_batch_augment("seed", 64)
    rows = np.stack([spec.draw(np.random.default_rng(i), (3, 64, 64)) for i in range(4000)])
    flipped = rows[:, FLIP] == 1
    changed = rows[:, ALPHA] != 1
    warped = rows[:, AFFINE] == 1
    noisy = rows[:, SIGMA] > 0
    for fired, p in ((flipped, 0.5), (changed, 0.5), (warped, 0.5), (noisy, 0.3)):
        assert abs(fired.mean() - p) < 0.04
    # The three fire independently of each other.
    assert abs((changed & warped).mean() - 0.25) < 0.04
    assert abs((flipped & changed).mean() - 0.25) < 0.04
    assert np.all(np.abs(rows[changed, ALPHA] - 1) <= 0.2)
    assert np.all(np.abs(rows[changed, BETA]) <= 0.2 * 255)
    assert rows[changed, BETA].std() > 0.2 * 255 / math.sqrt(3) * 0.9  # spread over the range
    assert np.all((rows[warped][:, [SCALE_X, SCALE_Y]] >= 0.9)
                  & (rows[warped][:, [SCALE_X, SCALE_Y]] <= 1.1))
    assert not np.allclose(rows[warped, SCALE_X], rows[warped, SCALE_Y])  # per axis
    assert np.all(np.abs(rows[warped, ANGLE]) <= 15)
    assert np.all(np.abs(rows[warped][:, [SHIFT_X, SHIFT_Y]]) <= 0.0625)
    assert np.all((rows[noisy, SIGMA] >= 0.01 * 255) & (rows[noisy, SIGMA] <= 0.05 * 255))
    assert np.all(rows[noisy, OFFSET] == np.round(rows[noisy, OFFSET]))
    assert rows[noisy, OFFSET].max() <= BANK_SIZE - 3 * 64 * 64
    np.testing.assert_array_equal(rows[~warped][:, [SCALE_X, SCALE_Y]], 1.0)
    np.testing.assert_array_equal(rows[~noisy, SIGMA], 0.0)


def test_draw_depends_on_the_generator_only_and_refuses_images_beyond_the_bank():
    spec = BatchAugment(p_noise=1.0)
    first = spec.draw(np.random.default_rng(7), (3, 32, 32))
    np.testing.assert_array_equal(first, spec.draw(np.random.default_rng(7), (3, 32, 32)))
    assert not np.array_equal(first, spec.draw(np.random.default_rng(8), (3, 32, 32)))
    with pytest.raises(ValueError, match="larger than the noise bank"):
        spec.draw(np.random.default_rng(0), (3, 2048, 2048))
    with pytest.raises(ValueError, match="p_affine"):
        BatchAugment(p_affine=1.5)
    with pytest.raises(ValueError, match="p_flip"):
        BatchAugment(p_flip=-0.1)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="NCHW"):
        augment_batch(torch.zeros(3, 8, 8, dtype=torch.uint8), _params(IDENTITY))
    with pytest.raises(ValueError, match=f"\\[N, {PARAMS}\\]"):
        augment_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), _params(IDENTITY))


def test_only_the_seed_preset_augments_per_batch():
    assert isinstance(build_batch_augment("seed", 320), BatchAugment)
    assert build_batch_augment("resize", 320) is None


def test_image_sizes_beyond_the_noise_bank_are_a_user_error():
    from imet.errors import UserError

    assert build_batch_augment("seed", 1182) is not None
    with pytest.raises(UserError, match="--image-size 1183: the seed preset adds noise to "
                                        "images of at most 1182 px"):
        build_batch_augment("seed", 1183)
    assert build_batch_augment("resize", 2048) is None
    assert set(TRAIN_PRESETS) == {"seed", "resize", "pad"}


def test_sampling_grid_is_affine_grid():
    import torch.nn.functional as F

    from imet.data.transforms import affine_theta, sampling_grid

    rows = _params(_row(affine=1, scale_x=0.93, scale_y=1.04, angle=11, shift_x=0.03,
                        shift_y=-0.05), _row(affine=1, angle=-4))
    theta = affine_theta(rows, 20, 36).float()
    expected = F.affine_grid(theta, [2, 3, 20, 36], align_corners=False)
    assert torch.allclose(sampling_grid(theta, 20, 36), expected, atol=1e-6)
