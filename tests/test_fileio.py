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
