import numpy as np
import pytest
from PIL import Image

from imet.data.images import image_problem, load_rgb
from imet.data.layout import CompetitionLayout
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
    assert image_problem(path) == str(err.value)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_garbage_is_a_data_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=str(path)):
        load_rgb(path)


def test_image_problem_is_none_for_a_good_image(mini_data):
    assert image_problem(first_train_image(mini_data)) is None
