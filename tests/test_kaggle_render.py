"""`imet kaggle render --config FILE`: the run's settings live in a file render reads, one
trainer kernel per member with its own output, hand edits are never overwritten silently."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
owner = "alice"
accelerator = {trainer = "NvidiaL4"}
train_args = ["--batch-size", "24", "--epochs", "30", "--num-workers", "2"]
validate_args = ["--tta", "none"]
predict_args = ["--tta", "none", "--ensemble", "rank"]

[[member]]
fold = 0
arch = "timm:convnext_tiny.fb_in22k_ft_in1k"
image_size = 288

[[member]]
name = "effb3-f1"
fold = 1
arch = "timm:efficientnet_b3.ra2_in1k"
epochs = 12
args = ["--lr", "3e-4"]
"""


def render(out, *extra):
    return subprocess.run([sys.executable, "-m", "imet", "kaggle", "render", "--kernels",
                           str(REPO / "kernels"), "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=REPO)


def meta(out, kernel):
    return json.loads((out / kernel / "kernel-metadata.json").read_text())


def settings_of(script: Path, env=None) -> dict:
    """The settings lines of a rendered script, evaluated as the kernel evaluates them (the
    bootstrap below them is not run)."""
    lines = [line for line in script.read_text().splitlines()
             if line.startswith(("import ", "DEFAULT_", "TRAIN_ARGS", "VALIDATE_ARGS",
                                 "PREDICT_ARGS", "PSEUDO_LABEL_ARGS", "ACCELERATOR",
                                 "KERNEL"))]
    code = "\n".join(lines) + "\nprint(repr({k: v for k, v in globals().items() if k.isupper()}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return eval(proc.stdout)


def test_rendering_again_keeps_the_settings_of_the_config_file(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    out = tmp_path / "k"
    for _ in range(2):
        proc = render(out, "--config", str(config))
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["inference", "trainer-effb3-f1",
                                                    "trainer-f0", "validation"]
    f0 = settings_of(out / "trainer-f0" / "trainer.py")
    assert f0["TRAIN_ARGS"] == ["--fold", "0", "--arch", "timm:convnext_tiny.fb_in22k_ft_in1k",
                                "--image-size", "288", "--batch-size", "24", "--epochs", "30",
                                "--num-workers", "2"]
    assert f0["ACCELERATOR"] == "NvidiaL4"
    assert f0["KERNEL"] == meta(out, "trainer-f0")["id"]
    assert meta(out, "trainer-f0")["machine_shape"] == "NvidiaL4"
    f1 = settings_of(out / "trainer-effb3-f1" / "trainer.py")["TRAIN_ARGS"]
    assert f1[:6] == ["--fold", "1", "--arch", "timm:efficientnet_b3.ra2_in1k", "--epochs", "12"]
    assert "30" not in f1 and f1[-2:] == ["--lr", "3e-4"]
    assert settings_of(out / "validation" / "validation.py")["VALIDATE_ARGS"] == ["--tta", "none"]
    inference = settings_of(out / "inference" / "inference.py")
    assert inference["PREDICT_ARGS"] == ["--tta", "none", "--ensemble", "rank"]
    assert inference["ACCELERATOR"] == "NvidiaTeslaT4"
    # A rehearsal still replaces the arguments through IMET_KERNEL_ARGS.
    rehearsal = settings_of(out / "trainer-f0" / "trainer.py", {"IMET_KERNEL_ARGS": "--fold 3"})
    assert rehearsal["TRAIN_ARGS"] == ["--fold", "3"]


def test_five_fold_kernels_each_with_its_own_output_attached_to_validation_and_inference(tmp_path):
    out = tmp_path / "k"
    proc = render(out, "--owner", "bob")
    assert proc.returncode == 0, proc.stderr
    folds = [f"bob/imet-trainer-f{k}" for k in range(5)]
    for k in range(5):
        trainer = meta(out, f"trainer-f{k}")
        assert trainer["id"] == folds[k] and trainer["title"] == f"imet-trainer-f{k}"
        assert trainer["kernel_sources"] == [folds[k]]
        args = settings_of(out / f"trainer-f{k}" / "trainer.py")["TRAIN_ARGS"]
        assert args[:2] == ["--fold", str(k)] and args.count("--fold") == 1
    assert meta(out, "validation")["kernel_sources"] == folds
    assert meta(out, "inference")["kernel_sources"] == folds + ["bob/imet-validation"]


def test_pseudo_labels_go_from_the_inference_kernel_to_a_trainer_asking_extra_auto(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(textwrap.dedent("""\
        owner = "dora"
        pseudo_label_args = ["--min-prob", "0.8", "--soft"]
        [[member]]
        fold = 0
        [[member]]
        name = "student-f0"
        fold = 0
        args = ["--extra", "auto"]
        """))
    out = tmp_path / "k"
    proc = render(out, "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    inference = settings_of(out / "inference" / "inference.py")
    assert inference["PSEUDO_LABEL_ARGS"] == ["--min-prob", "0.8", "--soft"]
    student = meta(out, "trainer-student-f0")
    assert student["kernel_sources"] == ["dora/imet-trainer-student-f0", "dora/imet-inference"]
    assert settings_of(out / "trainer-student-f0" / "trainer.py")["TRAIN_ARGS"][-2:] == \
        ["--extra", "auto"]
    assert meta(out, "trainer-f0")["kernel_sources"] == ["dora/imet-trainer-f0"]
    # Without the key the inference kernel writes no pseudo-labels.
    plain = tmp_path / "plain"
    assert render(plain, "--owner", "dora").returncode == 0
    assert settings_of(plain / "inference" / "inference.py")["PSEUDO_LABEL_ARGS"] is None


def test_telegram_attaches_the_owners_dataset_to_the_kernels_that_send(tmp_path):
    """`telegram = true`: the trainers and the validation kernel (its doctor reports what stops
    it) attach <owner>/imet-telegram; the inference kernel (internet off) and a member whose
    args say --notify off do not. Without the key nothing is attached."""
    config = tmp_path / "run.toml"
    config.write_text('owner = "alice"\ntelegram = true\n[[member]]\nfold = 0\n'
                      '[[member]]\nname = "quiet"\nfold = 1\nargs = ["--notify", "off"]\n')
    out = tmp_path / "k"
    assert render(out, "--config", str(config)).returncode == 0
    attached = {kernel: "alice/imet-telegram" in meta(out, kernel)["dataset_sources"]
                for kernel in ("trainer-f0", "trainer-quiet", "validation", "inference")}
    assert attached == {"trainer-f0": True, "trainer-quiet": False, "validation": True,
                        "inference": False}
    assert meta(out, "trainer-f0")["dataset_sources"][:2] == ["alice/imet-src",
                                                              "alice/imet-weights"]
    config.write_text('owner = "alice"\n[[member]]\nfold = 0\n')
    assert render(out, "--config", str(config), "--force").returncode == 0
    assert "alice/imet-telegram" not in meta(out, "trainer-f0")["dataset_sources"]


def test_a_hand_edit_is_refused_unless_forced(tmp_path):
    out = tmp_path / "k"
    assert render(out, "--owner", "bob").returncode == 0
    edited = out / "trainer-f2" / "trainer.py"
    edited.write_text(edited.read_text().replace("'--epochs', '20'", "'--epochs', '3'"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = render(out, "--owner", "carol")
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and str(edited) in line and "--force" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, \
        "nothing written when one kernel is refused"
    proc = render(out, "--owner", "carol", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "'--epochs', '20'" in edited.read_text()
    assert meta(out, "trainer-f0")["id"] == "carol/imet-trainer-f0"
    assert render(out, "--owner", "carol").returncode == 0, "an untouched kernel renders again"


def test_a_bad_config_is_one_line(tmp_path):
    cases = {
        "unknown key": ('owner = "a"\nepochs = 3\n', "unknown key 'epochs'"),
        "duplicate": ('owner = "a"\n[[member]]\nfold = 0\n[[member]]\nname = "f0"\nfold = 1\n',
                      "two members are named 'f0'"),
        "member key": ('owner = "a"\n[[member]]\nfold = 0\nlr = 1\n', "unknown key 'lr'"),
        "not toml": ("owner = \n", "not valid TOML"),
        "telegram": ('owner = "a"\ntelegram = "yes"\n', "telegram must be true or false"),
    }
    for name, (text, expected) in cases.items():
        config = tmp_path / f"{name}.toml"
        config.write_text(textwrap.dedent(text))
        proc = render(tmp_path / name, "--config", str(config))
        (line,) = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and expected in line and str(config) in line, (name, line)
        assert not (tmp_path / name).exists()


TYPOS = {  # settings -> what the one line must name besides the file: the key and the close match
    'train_args = ["--epocs", "2"]': ("train_args", "'--epocs'", "did you mean --epochs?"),
    '[[member]]\nfold = 0\nargs = ["--lrr", "3e-4"]': ("member 'f0': args", "'--lrr'",
                                                        "did you mean --lr?"),
    '[[member]]\nfold = 7': ("member 'f7'", "fold 7", "the 5 folds"),
    '[[member]]\nfold = 1\nepochs = 0': ("member 'f1'", "--epochs must be > 0"),
    'validate_args = ["--tta", "none,hflp"]': ("validate_args", "'hflp'", "did you mean hflip?"),
    'predict_args = ["--ensemble", "rnk"]': ("predict_args", "'rnk'", "'rank'"),
    'predict_args = ["--out", "x.csv"]': ("predict_args", "--out", "inference kernel itself"),
    'pseudo_label_args = ["--min-prb", "0.9"]': ("pseudo_label_args", "'--min-prb'",
                                                 "did you mean --min-prob?"),
}


def test_render_refuses_what_a_kernel_would_refuse_and_writes_nothing(tmp_path):
    """Each command's flags in the settings go through that command's own parser: a typo is
    one line naming the file, the key and the close match, before anything is written."""
    out = tmp_path / "k"
    assert render(out, "--owner", "bob").returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for number, (text, expected) in enumerate(TYPOS.items()):
        config = tmp_path / f"typo{number}.toml"
        config.write_text(f'owner = "bob"\n{text}\n')
        proc = render(out, "--config", str(config))
        (line,) = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and line.startswith(f"imet kaggle: error: {config}: "), line
        assert all(part in line for part in expected), (text, line)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, text
    fresh = tmp_path / "fresh"
    config.write_text('owner = "bob"\ntrain_args = ["--epocs", "2"]\n')
    assert render(fresh, "--config", str(config)).returncode == 2 and not fresh.exists()


def folders(out):
    return sorted(p.name for p in out.iterdir())


def test_render_removes_the_kernels_its_settings_no_longer_make_unless_edited(tmp_path):
    out = tmp_path / "k"
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    assert render(out, "--owner", "alice").returncode == 0
    (out / "notes.txt").write_text("mine")  # not a kernel: render leaves it alone
    proc = render(out, "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert folders(out) == ["inference", "notes.txt", "trainer-effb3-f1", "trainer-f0",
                            "validation"]
    assert proc.stdout.count("removed ") == 4 and f"removed {out / 'trainer-f4'}" in proc.stdout
    assert f"kaggle chain {out / 'trainer-f0'}" in proc.stdout, "says how to push the first time"

    # Rendered again with five folds, then one stale-to-be kernel edited, one given a file.
    assert render(out, "--owner", "alice").returncode == 0
    edited = out / "trainer-f3" / "trainer.py"
    edited.write_text(edited.read_text() + "# mine\n")
    (out / "trainer-f4" / "extra.py").write_text("")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = render(out, "--config", str(config))
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "trainer-f3, trainer-f4 are no longer rendered" in line
    assert "--force" in line and "trainer-f2" not in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    proc = render(out, "--config", str(config), "--force")
    assert proc.returncode == 0, proc.stderr
    assert folders(out) == ["inference", "notes.txt", "trainer-effb3-f1", "trainer-f0",
                            "validation"]


def test_the_competition_attached_is_the_one_whose_files_data_holds(tmp_path):
    """No competition in the settings: --data's files decide it (2021 here); a settings
    competition other than --data's is refused in one line, nothing written."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "imet", "mini-imet", "--out", str(data), "--layout",
                    "2021", "--n-train", "16", "--n-test", "4", "--size", "16"], check=True,
                   capture_output=True)
    out = tmp_path / "kernels"
    proc = render(out, "--owner", "alice", "--data", str(data))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"competition: imet-2021-fgvc8 (the files of {data}: 2021's")
    for kernel in ("trainer-f0", "validation", "inference"):
        assert meta(out, kernel)["competition_sources"] == ["imet-2021-fgvc8"]
    config = tmp_path / "run.toml"
    config.write_text('competition = "imet-2019-fgvc6"\n')
    again = tmp_path / "again"
    proc = render(again, "--owner", "alice", "--data", str(data), "--config", str(config))
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and line.startswith(
        f"imet kaggle: error: {config}: competition = 'imet-2019-fgvc6', but --data {data} "
        "holds imet-2021-fgvc8's files"), line
    assert not again.exists()
