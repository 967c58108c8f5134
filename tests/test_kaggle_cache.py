"""The decode-once cache in the Kaggle flow: built in the scratch folder when the session's
epochs pay for the build, kept to the run's first choice, used when attached, never carried."""
import json
import subprocess
import sys

import pytest

from imet.data.images import MANIFEST
from imet.kaggle import session as image_cache, session as sessions

IMET = [sys.executable, "-m", "imet"]
# Mounted as today's Kaggle mounts a competition and a dataset (nested).
DATA, ATTACHED = "input/competitions/imet-2019-fgvc6", "input/datasets/me/imet-cache"


@pytest.fixture
def kaggle(tmp_path, mini_data, monkeypatch):
    monkeypatch.delenv(image_cache.CACHE_ENV, raising=False)
    root = tmp_path / "kaggle"
    (root / DATA).parent.mkdir(parents=True)
    (root / DATA).symlink_to(mini_data)
    monkeypatch.setenv("IMET_KAGGLE_ROOT", str(root))
    return root


def prepare(root, work, *args, seconds_left=3600, resumed=False):
    work.mkdir(parents=True, exist_ok=True)
    return image_cache.prepare(root / DATA, ["--image-size", "32", *args],
                        seconds_left, work, root / "temp", root / "input", IMET, resumed)


def test_the_build_pays_back_only_with_enough_epochs_in_the_session():
    assert image_cache.PAYBACK_EPOCHS == pytest.approx(1.8, abs=0.1)
    assert image_cache.should_build(20, 100_000, 4, 12 * 3600)[0]
    assert not image_cache.should_build(1, 100_000, 4, 12 * 3600)[0]  # one epoch left
    build, why = image_cache.should_build(20, 100_000, 1, 5 * 60)  # an epoch does not fit
    assert not build and "20 epochs to run" in why and "1.8 pay back" in why
    # what fits in the time left is said in epochs, of how many images
    assert "the 5 min left hold ~0.7 epochs of 100000 images read from the PNGs by 1 loader " \
        "worker, so ~0.7 run this session" in why


def test_a_run_builds_its_cache_in_temp_keeps_its_choice_and_never_carries_it(kaggle, capsys):
    first = kaggle / "s1"
    cache = kaggle / "temp" / "imet-cache-32"
    assert prepare(kaggle, first, "--epochs", "5") == cache and (cache / MANIFEST).is_file()
    assert json.loads((first / image_cache.CHOICE).read_text())["build"] is True
    assert "image cache: building one: 5 epochs to run" in capsys.readouterr().out
    # A user's own cache in the output, and the metrics beside it: only the metrics go on.
    subprocess.run([*IMET, "cache", "--data", str(kaggle / DATA),
                    "--size", "32", "--split", "train", "--out", str(first / "extra" / "c"),
                    "--no-progress"], check=True, capture_output=True)
    (first / "metrics.csv").write_text("step\n1\n")
    second = kaggle / "s2"
    second.mkdir()
    sessions._carry_previous_output(first, second)
    assert (second / "metrics.csv").is_file() and (second / image_cache.CHOICE).is_file()
    assert (second / "extra").is_dir() and not (second / "extra" / "c").exists()
    (second / "c2").mkdir()  # a cache at the top of the output is not carried either
    (second / "c2" / MANIFEST).write_text("{broken")
    third = kaggle / "s3"
    third.mkdir()
    sessions._carry_previous_output(second, third)
    assert not (third / "c2").exists()
    # The second session has one epoch left, yet builds: the run started on the cache's pixels.
    import shutil
    shutil.rmtree(kaggle / "temp")
    prepare(kaggle, second, "--epochs", "1")
    assert (cache / MANIFEST).is_file()
    assert "chose in its first session to build" in capsys.readouterr().out


def test_a_short_run_reads_the_pngs_and_an_attached_cache_is_used(kaggle, capsys, monkeypatch):
    assert prepare(kaggle, kaggle / "short", "--epochs", "1") is None
    assert not (kaggle / "temp").exists()
    assert json.loads((kaggle / "short" / image_cache.CHOICE).read_text())["build"] is False
    assert "not building one: 1 epochs to run" in capsys.readouterr().out
    prepare(kaggle, kaggle / "older", "--epochs", "20", resumed=True)  # began without a choice
    assert "not building one: the run's earlier sessions read the PNGs" in capsys.readouterr().out
    attached = kaggle / ATTACHED
    subprocess.run([*IMET, "cache", "--data", str(kaggle / DATA),
                    "--size", "32", "--split", "train", "--out", str(attached),
                    "--no-progress"], check=True, capture_output=True)
    assert prepare(kaggle, kaggle / "long", "--epochs", "20") is None
    assert f"using the attached {attached}" in capsys.readouterr().out
    assert not (kaggle / "temp").exists() and not (kaggle / "long" / image_cache.CHOICE).exists()
