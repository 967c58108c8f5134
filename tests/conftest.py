"""Shared fixtures. `mini_data` is used by every test module: treat it as read-only (copy it
with `mini_data_copy` before changing anything)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MINI = {"n_train": 64, "n_test": 24, "size": 48, "seed": 0}
MINI_FOLDS = 2


@pytest.fixture(scope="session")
def mini_data(tmp_path_factory):
    """Path of a tiny mini-iMet (64 train / 24 test images, 48 px, seed 0) with folds.csv
    (2 folds). Session-scoped: generated once per test run."""
    from imet.data.folds import make_folds, write_folds
    from imet.data.labels import CompetitionLayout, read_labels, read_train
    from imet.data.mini_imet import generate

    root = tmp_path_factory.mktemp("mini") / "mini-imet"
    generate(root, **MINI)
    layout = CompetitionLayout(root)
    ids, targets = read_train(layout.train_csv, read_labels(layout.labels_csv))
    write_folds(layout.folds_csv, ids, make_folds(targets, MINI_FOLDS, seed=0))
    return root


@pytest.fixture
def mini_data_copy(mini_data, tmp_path):
    """A private copy of `mini_data` that a test may corrupt."""
    return shutil.copytree(mini_data, tmp_path / "data")


@pytest.fixture
def mini_data_2021(mini_data_copy):
    """mini-iMet moved into 2021's shape: other file names, nested image folders."""
    root = mini_data_copy
    (root / "labels.csv").rename(root / "label_map.csv")
    (root / "train.csv").rename(root / "train-from-kaggle.csv")
    (root / "train-1").mkdir()
    (root / "train").rename(root / "train-1" / "train-1")
    (root / "test").rename(root / "test-x")
    (root / "test").mkdir()
    (root / "test-x").rename(root / "test" / "test")
    return root


@pytest.fixture(scope="session")
def local_dataset(tmp_path_factory):
    """The imet source dataset built for this interpreter (as `packaging/build_dataset.py`
    builds Kaggle's): shared by the packaging and the emulated-Kaggle tests."""
    out = tmp_path_factory.mktemp("ds") / "kaggle-dataset"
    repo = Path(__file__).resolve().parents[1]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    proc = subprocess.run([sys.executable, str(repo / "packaging" / "build_dataset.py"),
                           "--owner", "tester", "--python-version", version, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def train_items(mini_data):
    """(image paths, multi-hot targets) of mini_data's training images."""
    from imet.data.labels import CompetitionLayout, read_labels, read_train

    layout = CompetitionLayout(mini_data)
    ids, targets = read_train(layout.train_csv, read_labels(layout.labels_csv))
    return layout.image_paths("train", ids), targets


@pytest.fixture(scope="module")
def one_thread():
    """Runs compared bit for bit must use one thread count; tiny convolutions also gain nothing
    from threads on a machine whose few cores are shared. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
