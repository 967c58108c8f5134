"""The one walk over input roots that checkpoints, weights, run files and Kaggle inputs share."""
from imet.walk import walk_folders


def test_links_are_followed_once_and_loops_end(tmp_path):
    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "weights.pth").write_text("w")
    (tmp_path / "root" / "a" / "b" / "loop").symlink_to(tmp_path / "root")
    (tmp_path / "root" / "linked").symlink_to(tmp_path / "elsewhere")
    seen = [(folder.relative_to(tmp_path).as_posix(), files)
            for folder, _, files in walk_folders([tmp_path / "root", tmp_path / "elsewhere"])]
    assert seen == [("root", []), ("root/a", []), ("root/a/b", []),
                    ("root/linked", ["weights.pth"])]


def test_depth_limit_and_pruning(tmp_path):
    (tmp_path / "1" / "2" / "3").mkdir(parents=True)
    (tmp_path / "skip" / "deep").mkdir(parents=True)
    folders = [f.relative_to(tmp_path).as_posix() for f, _, _ in walk_folders([tmp_path], 2)]
    assert folders == [".", "1", "1/2", "skip", "skip/deep"]
    listed = []
    for folder, subfolders, _ in walk_folders([tmp_path]):
        listed.append(folder.name)
        if folder.name == "skip":
            subfolders[:] = []
    assert "deep" not in listed and "3" in listed
