"""End to end through `python -m imet`: a user's mistake gives one line on stderr, naming the
file, and a non-zero exit code; never a traceback."""
import subprocess
import sys

import pytest

from imet.data.labels import CompetitionLayout


def imet(*args):
    result = subprocess.run([sys.executable, "-m", "imet", *map(str, args)],
                            capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr + result.stdout
    return result


def one_error_line(result, command):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"imet {command}: error: ")
    return lines[0]


def rewrite_row(csv_path, line_no, attribute_ids):
    lines = csv_path.read_text().splitlines()
    lines[line_no - 1] = lines[line_no - 1].split(",")[0] + "," + attribute_ids
    csv_path.write_text("\n".join(lines) + "\n")


def test_unknown_attribute_id(mini_data_copy):
    layout = CompetitionLayout(mini_data_copy)
    rewrite_row(layout.train_csv, 4, "2 1234")
    result = imet("folds", "--data", mini_data_copy, "--n-folds", 2)
    assert result.returncode == 2
    line = one_error_line(result, "folds")
    assert f"{layout.train_csv}: line 4: field 'attribute_ids': attribute id 1234 is not in " \
           "labels.csv" in line
    assert not layout.folds_csv.exists() or layout.folds_csv.read_text().startswith("id,fold")


def test_missing_column(mini_data_copy):
    layout = CompetitionLayout(mini_data_copy)
    text = layout.train_csv.read_text()
    layout.train_csv.write_text(text.replace("id,attribute_ids", "id,labels", 1))
    result = imet("folds", "--data", mini_data_copy)
    assert result.returncode == 2
    assert f"{layout.train_csv}: line 1: missing column 'attribute_ids' (found: id, labels)" in \
        one_error_line(result, "folds")


def test_corrupt_png_is_listed_by_check_data(mini_data_copy):
    layout = CompetitionLayout(mini_data_copy)
    image_id = layout.train_csv.read_text().splitlines()[10].split(",")[0]
    png = layout.image_path("train", image_id)
    png.write_bytes(png.read_bytes()[:150])
    result = imet("check-data", "--data", mini_data_copy)
    assert result.returncode == 1
    # after the layout's and the competition's lines
    problems = result.stdout.splitlines()[2:]
    assert problems == [f"{png}: cannot decode image (image file is truncated); re-download the "
                        "image or remove its row from the CSV"] \
        or len(problems) == 1 and problems[0].startswith(f"{png}: cannot decode image")
    assert "1 problem in" in one_error_line(result, "check-data")


@pytest.mark.parametrize("args, expected", [
    (("folds", "--data", "{tmp}/absent"), "{tmp}/absent: data folder not found"),
    (("folds", "--data", "{data}", "--n-folds", "1"), "--n-folds must be at least 2"),
    (("mini-imet", "--out", "{data}"), "{data}: already holds another mini-iMet; pass --force"),
    (("mini-imet", "--out", "{tmp}/m", "--size", "4"), "--size must be between 16 and 1024"),
])
def test_user_errors(mini_data_copy, tmp_path, args, expected):
    fill = {"tmp": tmp_path, "data": mini_data_copy}
    result = imet(*(a.format(**fill) for a in args))
    assert result.returncode == 2
    assert expected.format(**fill) in one_error_line(result, args[0])


def test_the_commands_say_what_they_did(tmp_path):
    out = tmp_path / "mini"
    made = imet("mini-imet", "--out", out, "--n-train", 30, "--n-test", 5, "--size", 32)
    assert made.returncode == 0, made.stderr
    assert "mini-iMet wrote in" in made.stdout and "30 train + 5 test images" in made.stdout
    folds = imet("folds", "--data", out, "--n-folds", 3, "--seed", 1)
    assert folds.returncode == 0, folds.stderr
    assert f"wrote {out / 'folds.csv'}: 3 folds over 30 images" in folds.stdout
    assert "cannot be in every fold" in folds.stdout  # 30 images: some digits are rare
    checked = imet("check-data", "--data", out)
    assert checked.returncode == 0 and f"{out} is clean" in checked.stdout


def test_degenerate_images_check_data_and_training(mini_data_copy, tmp_path):
    """A 1x1 placeholder is a problem for check-data and stops training with one line naming
    it, also when a DataLoader worker met it; a JPEG named .png is only a warning."""
    from PIL import Image

    layout = CompetitionLayout(mini_data_copy)
    ids = [line.split(",")[0] for line in layout.train_csv.read_text().splitlines()[1:]]
    tiny, misnamed = layout.image_path("train", ids[3]), layout.image_path("train", ids[7])
    Image.open(misnamed).convert("RGB").save(misnamed, format="JPEG")
    result = imet("check-data", "--data", mini_data_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"imet check-data: warning: {misnamed}: a JPEG file named .png" in result.stderr
    Image.new("RGB", (1, 1)).save(tiny)
    result = imet("check-data", "--data", mini_data_copy)
    assert result.returncode == 1
    assert result.stdout.splitlines()[2:] == [  # after the layout's and competition's lines
        f"{tiny}: image is 1x1 px, its shorter side below the minimum of 16 px; re-download "
        "the image or remove its row from the CSV"]
    assert imet("check-data", "--data", mini_data_copy, "--min-side", "1").returncode == 0
    result = imet("train", "--data", mini_data_copy, "--fold", 0, "--arch", "tiny_cnn",
                  "--no-pretrained", "--image-size", 32, "--epochs", 1, "--batch-size", 8,
                  "--num-workers", 2, "--notify", "off", "--out", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"imet train: error: {tiny}: image is 1x1 px, its shorter side below the minimum of "
        "16 px; re-download the image or remove its row from the CSV")
