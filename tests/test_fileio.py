"""imet.fileio: the one atomic writer every layer uses (submissions, model files, reports)."""
import pytest

from imet.fileio import atomic_open, atomic_write_text


def test_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "run.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new ü")
    assert target.read_text(encoding="utf-8") == "new ü"
    assert sorted(p.name for p in target.parent.iterdir()) == ["run.json"]


def test_failure_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "submission.csv"
    atomic_write_text(target, "id,attribute_ids\na,1\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w", encoding="utf-8") as handle:
            handle.write("id,attribute_ids\n")
            raise RuntimeError("killed half-way")
    assert target.read_text() == "id,attribute_ids\na,1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]


def test_failure_on_a_new_file_creates_nothing(tmp_path):
    target = tmp_path / "model.pt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as handle:
            handle.write(b"\0" * 10)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_finished_file_honours_the_umask(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "submission.csv", "id,attribute_ids\n")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_verify_failure_keeps_the_old_file(tmp_path):
    from imet.fileio import atomic_torch_save

    target = tmp_path / "state.pt"
    atomic_torch_save({"a": 1}, target)

    def refuse(tmp, size):
        assert tmp.stat().st_size == size
        raise ValueError("does not read back")

    with pytest.raises(ValueError):
        atomic_torch_save({"a": 2}, target, verify=refuse)
    import torch
    assert torch.load(target, weights_only=True) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_copy_is_whole_or_absent(tmp_path):
    from imet.fileio import atomic_copy

    source = tmp_path / "model.pt"
    source.write_bytes(b"x" * (3 << 20))
    target = atomic_copy(source, tmp_path / "out" / "model.pt")
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]
