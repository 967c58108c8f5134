import numpy as np
import pytest
from PIL import Image

from imet.data.images import MIN_SIDE, image_findings, load_rgb
from imet.data.labels import CompetitionLayout
from imet.errors import DataError


def first_train_image(root):
    layout = CompetitionLayout(root)
    image_id = layout.train_csv.read_text().splitlines()[1].split(",")[0]
    return layout.image_path("train", image_id)


def test_loads_mini_imet_png_as_rgb_uint8(mini_data):
    image = load_rgb(first_train_image(mini_data))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) == 48


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_other_modes_become_rgb(tmp_path, mode):
    path = tmp_path / "x.png"
    Image.new(mode, (5, 3)).save(path)
    assert load_rgb(path).shape == (3, 5, 3)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png: image not found"):
        load_rgb(tmp_path / "nope.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_names_the_file(tmp_path, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        load_rgb(path)
    assert str(err.value).startswith(f"{path}: cannot decode image")
    assert "re-download the image or remove its row" in str(err.value)
    assert image_findings(path) == (str(err.value), None)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_garbage_is_a_data_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=str(path)):
        load_rgb(path)


def test_a_good_image_has_no_findings(mini_data):
    assert image_findings(first_train_image(mini_data)) == (None, None)


@pytest.mark.parametrize("size", [(1, 1), (MIN_SIDE - 1, 300)])
def test_an_image_below_the_minimum_side_is_a_problem(tmp_path, size):
    path = tmp_path / "tiny.png"
    Image.new("RGB", size).save(path)
    problem, _ = image_findings(path)
    assert problem == (f"{path}: image is {size[0]}x{size[1]} px, its shorter side below the "
                       f"minimum of {MIN_SIDE} px; re-download the image or remove its row "
                       "from the CSV")
    with pytest.raises(DataError, match="shorter side below"):
        load_rgb(path, MIN_SIDE)
    assert load_rgb(path).shape == (size[1], size[0], 3)  # the check is the caller's choice
    assert image_findings(path, min_side=1) == (None, None)


def test_a_jpeg_named_png_is_a_warning(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "red").save(path, format="JPEG")
    assert image_findings(path) == (None, f"{path}: a JPEG file named .png; convert it to PNG "
                                    "or rename it (imet reads it either way)")
    assert load_rgb(path).shape == (30, 40, 3)
