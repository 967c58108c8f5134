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


def test_folder_moves_into_place_whole(tmp_path):
    from imet.fileio import move_folder_into_place

    target = tmp_path / "mini-imet"
    for text in ("old", "new"):
        built = tmp_path / f".mini-imet.partial-{text}"
        built.mkdir()
        (built / "train.csv").write_text(text)
        assert move_folder_into_place(built, target)
    assert (target / "train.csv").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini-imet"]

    theirs = tmp_path / ".late"
    theirs.mkdir()
    (theirs / "train.csv").write_text("late")
    assert not move_folder_into_place(theirs, target, replace=False)
    assert (target / "train.csv").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini-imet"]


def test_symlink_is_swapped_in(tmp_path):
    from imet.fileio import atomic_symlink

    for version in ("1", "2"):
        (tmp_path / version).mkdir()
        atomic_symlink(tmp_path / "output", version, target_is_directory=True)
        assert (tmp_path / "output").resolve() == (tmp_path / version).resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "output"]


def test_file_sha256_and_utc_timestamp(tmp_path):
    import hashlib
    import re

    from imet.fileio import file_sha256, utc_timestamp

    data = bytes(range(256)) * 5000  # more than one read block
    (tmp_path / "weights.pth").write_bytes(data)
    assert file_sha256(tmp_path / "weights.pth") == hashlib.sha256(data).hexdigest()
    assert utc_timestamp(0) == "1970-01-01T00:00:00Z"
    assert utc_timestamp(1559052180.9) == "2019-05-28T14:03:00Z"
    assert re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_timestamp())


def test_json_object_or_none(tmp_path):
    from imet.fileio import read_json_object

    path = tmp_path / "MANIFEST.json"
    assert read_json_object(path) is None
    for text in ("{half", "[1, 2]", "null"):
        path.write_text(text)
        assert read_json_object(path) is None
    path.write_text('{"format": "imet-dataset", "note": "ü"}', encoding="utf-8")
    assert read_json_object(path) == {"format": "imet-dataset", "note": "ü"}


# What must be written once in imet/, and where: a second copy is a second place to change.
# Renaming into place may appear several times, but only inside fileio.
WRITTEN_ONCE = {
    r"%Y-%m-%dT%H:%M:%SZ": "imet/fileio.py",  # the UTC timestamp
    r"iter\(lambda: \w+\.read\(": "imet/fileio.py",  # a file's hash, block by block
    r"nvidia\[0-9\]": "imet/kaggle/session.py",  # the GPU probe
    r"_DURATION\.match": "imet/config.py",  # parsing a duration
    r"divmod\([^)]*3600\)": "imet/config.py",  # formatting one
    # scrubbing secrets out of a text: their shapes, then the known values
    r"\b(TOKEN_IN_TEXT|TELEGRAM_TOKEN|_SECRET_VALUE|shapes)\.sub\(": "imet/observe/console.py",
    r"\.replace\((secret|token)\b": "imet/observe/console.py",
}
RENAMES = r"\bos\.(replace|rename)\(|shutil\.move\(|\.rename\("


def _matches(pattern):
    import re
    from pathlib import Path

    import imet

    root = Path(imet.__file__).parent
    return sorted(str(path.relative_to(root.parent)) for path in root.rglob("*.py")
                  for _ in re.finditer(pattern, path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("pattern", sorted(WRITTEN_ONCE))
def test_each_primitive_is_written_once(pattern):
    assert _matches(pattern) == [WRITTEN_ONCE[pattern]]


def test_only_fileio_renames_into_place():
    assert set(_matches(RENAMES)) == {"imet/fileio.py"}
