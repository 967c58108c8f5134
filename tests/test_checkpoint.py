"""Checkpoint files: atomic, two generations, verified, weights_only, identity-checked."""
from __future__ import annotations

import fractions
import json
import logging
import os
from collections import OrderedDict

import pytest
import torch

from imet.data.transforms import AUGMENTATION_VERSION
from imet.errors import CheckpointError
from imet.train import checkpoint as ckpt
from imet.train.checkpoint import (
    FORMAT,
    VERSION,
    ForeignCheckpointError,
    IncompatibleCheckpointError,
    checkpoint_dir,
    find_resume,
    list_generations,
    load_checkpoint,
    save_checkpoint,
)

CONFIG_FP, LABELS_FP = "c0nf1g", "1abe1s"


def payload(step: int, config_fp=CONFIG_FP, labels_fp=LABELS_FP,
            augmentation=AUGMENTATION_VERSION) -> dict:
    meta = {"config_fingerprint": config_fp, "labels_fingerprint": labels_fp, "step": step,
            "augmentation": augmentation}
    if augmentation is None:  # written before checkpoints carried it
        del meta["augmentation"]
    return {"format": FORMAT, "version": VERSION, "meta": meta,
            "model": OrderedDict(w=torch.full((64, 64), float(step))),
            "rng": {"python": [3, list(range(625)), None], "torch": torch.get_rng_state()},
            "counters": {"step": step, "history": [{"step": step, "f2": 0.5}]}}


def steps_on_disk(out):
    return [step for step, _ in list_generations(checkpoint_dir(out))]


def test_two_generations_are_kept_with_sidecars(tmp_path):
    for step in (10, 20, 30):
        path = save_checkpoint(payload(step), tmp_path, step)
    assert path == tmp_path / "checkpoints" / "state-30.pt"
    assert steps_on_disk(tmp_path) == [30, 20]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["state-20.json", "state-20.pt", "state-30.json", "state-30.pt"]
    meta = json.loads((tmp_path / "checkpoints" / "state-30.json").read_text())
    assert meta["step"] == 30 and meta["config_fingerprint"] == CONFIG_FP
    assert meta["size"] == path.stat().st_size


def test_load_round_trips_with_weights_only(tmp_path):
    path = save_checkpoint(payload(5), tmp_path, 5)
    loaded = load_checkpoint(path, CONFIG_FP, LABELS_FP)
    assert torch.equal(loaded["model"]["w"], torch.full((64, 64), 5.0))
    assert loaded["rng"]["python"][1] == list(range(625))
    assert loaded["counters"]["history"] == [{"step": 5, "f2": 0.5}]


def test_a_failed_write_leaves_the_previous_generations_untouched(tmp_path, monkeypatch):
    save_checkpoint(payload(1), tmp_path, 1)
    bad = payload(2)
    bad["model"]["w"] = lambda: None  # torch.save cannot pickle a lambda
    with pytest.raises(Exception):
        save_checkpoint(bad, tmp_path, 2)
    assert steps_on_disk(tmp_path) == [1]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_pickled_objects_are_refused(tmp_path):
    # A checkpoint attached from a dataset is untrusted: anything beyond tensors and plain
    # values must not be unpickled.
    directory = checkpoint_dir(tmp_path)
    directory.mkdir(parents=True)
    torch.save({"format": FORMAT, "version": VERSION, "evil": fractions.Fraction(1, 3)},
               directory / "state-3.pt")
    with pytest.raises(CheckpointError, match="state-3.pt: not a readable train state"):
        load_checkpoint(directory / "state-3.pt")


def test_truncated_or_damaged_files_are_caught(tmp_path):
    path = save_checkpoint(payload(7), tmp_path, 7)
    intact = path.read_bytes()
    damaged = bytearray(intact)
    damaged[len(damaged) // 2] ^= 0xFF  # inside the tensor data: torch.load alone accepts it
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="fails its CRC32 check"):
        load_checkpoint(path)
    path.write_bytes(intact[:len(intact) // 2])
    with pytest.raises(CheckpointError, match="truncated in transfer"):
        load_checkpoint(path)
    ckpt.sidecar_of(path).unlink()  # without the sidecar the zip check still refuses it
    with pytest.raises(CheckpointError, match="not a complete zip archive"):
        load_checkpoint(path)


def test_other_config_or_label_space_is_refused(tmp_path):
    path = save_checkpoint(payload(4), tmp_path, 4)
    with pytest.raises(ForeignCheckpointError, match="another training config"):
        load_checkpoint(path, "other", LABELS_FP)
    with pytest.raises(CheckpointError, match="another label space"):
        load_checkpoint(path, CONFIG_FP, "other")


def test_resume_falls_back_to_the_previous_generation(tmp_path, caplog):
    save_checkpoint(payload(10), tmp_path, 10)
    newest = save_checkpoint(payload(20), tmp_path, 20)
    newest.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        resume = find_resume(tmp_path, [], CONFIG_FP, LABELS_FP)
    assert resume.payload["counters"]["step"] == 10 and resume.path.name == "state-10.pt"
    assert "state-20.pt is unusable" in caplog.text


def test_resume_with_nothing_usable(tmp_path):
    assert find_resume(tmp_path, [], CONFIG_FP, LABELS_FP) is None
    save_checkpoint(payload(1), tmp_path, 1).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="every checkpoint found is damaged"):
        find_resume(tmp_path, [], CONFIG_FP, LABELS_FP)


def test_resume_copies_the_newest_from_input_roots(tmp_path):
    inputs = tmp_path / "input"
    save_checkpoint(payload(30), inputs / "prev-session" / "run", 30)
    save_checkpoint(payload(50, config_fp="other-fold"), inputs / "other-run", 50)
    out = tmp_path / "working"
    save_checkpoint(payload(20), out, 20)
    os.chmod(inputs / "prev-session" / "run" / "checkpoints", 0o555)  # inputs are read-only
    resume = find_resume(out, [inputs], CONFIG_FP, LABELS_FP)
    assert resume.payload["counters"]["step"] == 30
    assert resume.path == out / "checkpoints" / "state-30.pt"
    assert resume.found_at == inputs / "prev-session" / "run" / "checkpoints" / "state-30.pt"
    assert steps_on_disk(out) == [30, 20]


def test_a_foreign_checkpoint_in_the_own_folder_is_an_error(tmp_path):
    save_checkpoint(payload(5, config_fp="changed-flags"), tmp_path, 5)
    with pytest.raises(CheckpointError, match="another training config.*--resume off"):
        find_resume(tmp_path, [], CONFIG_FP, LABELS_FP)


def as_format_1(path):
    """Rewrite a checkpoint and its sidecar as checkpoint format 1 wrote them."""
    old = torch.load(path, map_location="cpu", weights_only=True)
    old["version"] = 1
    torch.save(old, path)
    meta = json.loads(ckpt.sidecar_of(path).read_text())
    meta.update(version=1, size=path.stat().st_size)
    ckpt.sidecar_of(path).write_text(json.dumps(meta))


def test_a_checkpoint_of_another_format_is_refused_in_one_line_naming_both(tmp_path):
    """Never skipped, nor taken for a damaged file and fallen back from: a run whose checkpoints
    this imet cannot read is refused, in its own folder and in an input root alike."""
    assert VERSION == 2
    path = save_checkpoint(payload(30), tmp_path / "prev", 30)
    as_format_1(path)
    line = (f"{path} was written by checkpoint format 1; this imet reads format 2: finish the "
            "run with the imet that started it, or start over with --resume off")
    with pytest.raises(IncompatibleCheckpointError) as err:
        load_checkpoint(path, CONFIG_FP, LABELS_FP)
    assert str(err.value) == line
    with pytest.raises(IncompatibleCheckpointError) as err:
        find_resume(tmp_path / "prev", [], CONFIG_FP, LABELS_FP)
    assert str(err.value) == line
    out = tmp_path / "working"
    with pytest.raises(IncompatibleCheckpointError, match="written by checkpoint format 1; "
                                                          "this imet reads format 2"):
        find_resume(out, [tmp_path / "prev"], CONFIG_FP, LABELS_FP)
    assert steps_on_disk(out) == []  # the refused copy is not left behind


def test_imet_train_refuses_a_format_1_checkpoint_with_exit_code_2(mini_data, tmp_path, capsys):
    from imet.cli import main
    from imet.errors import HANDED_OVER_EXIT_CODE

    out = tmp_path / "run"
    args = ["train", "--data", str(mini_data), "--folds", str(mini_data / "folds.csv"),
            "--out", str(out), "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32",
            "--batch-size", "8", "--num-workers", "0", "--notify", "off", "--device", "cpu",
            "--eval-every", "0", "--session-steps", "1"]
    assert main(args) == HANDED_OVER_EXIT_CODE
    [(step, path)] = list_generations(checkpoint_dir(out))
    assert load_checkpoint(path)["version"] == 2
    as_format_1(path)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"imet train: error: {path} was written by checkpoint format 1; this imet "
                   "reads format 2: finish the run with the imet that started it, or start over "
                   "with --resume off")


@pytest.mark.parametrize("augmentation", [None, AUGMENTATION_VERSION + 1])
def test_a_run_started_by_an_imet_augmenting_differently_is_refused_not_skipped(tmp_path,
                                                                              augmentation):
    """Same config and labels, other augmentation scheme: in an input root (the previous
    Kaggle session) it is an error too, since skipping it would silently start over."""
    inputs, out = tmp_path / "input", tmp_path / "working"
    path = save_checkpoint(payload(30, augmentation=augmentation), inputs / "prev", 30)
    message = "augments differently .*--resume off"
    with pytest.raises(IncompatibleCheckpointError, match=message):
        load_checkpoint(path, CONFIG_FP, LABELS_FP)
    with pytest.raises(IncompatibleCheckpointError, match=message):
        find_resume(out, [inputs], CONFIG_FP, LABELS_FP)
    ckpt.sidecar_of(path).unlink()  # without a sidecar, the load itself refuses it
    with pytest.raises(IncompatibleCheckpointError, match=message):
        find_resume(out, [inputs], CONFIG_FP, LABELS_FP)
    assert steps_on_disk(out) == []  # the refused copy is not left behind
    save_checkpoint(payload(40, augmentation=augmentation), out, 40)
    with pytest.raises(IncompatibleCheckpointError, match=message):
        find_resume(out, [], CONFIG_FP, LABELS_FP)
    # Another run's checkpoint is still skipped before its scheme matters.
    save_checkpoint(payload(50, config_fp="other-fold", augmentation=augmentation),
                    tmp_path / "other", 50)
    assert find_resume(tmp_path / "fresh", [tmp_path / "other"], CONFIG_FP, LABELS_FP) is None
