"""Names and help as a newcomer meets them: `--help` says what exists and hides what imet fills
in itself, a mistyped flag, command, choice or arch gets its close match, one option name means
one thing, `--config` is TOML like every settings file, and each command's last line says what
it checked or what to do."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imet.cli import build_parser, main
from imet.config import given_settings

REPO_KERNELS = Path(__file__).resolve().parents[1] / "kernels"


def refused(argv, capsys) -> str:
    """The last stderr line of a command line argparse refuses (exit 2)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def help_text(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def test_the_kaggle_line_names_every_action(capsys):
    text = " ".join(help_text([], capsys).split())
    for action in ("run", "render", "chain", "campaign"):
        assert f"({action})" in text, action


@pytest.mark.parametrize("argv, line", [
    (["train", "--epocs", "2"],
     "imet train: error: unrecognized arguments: --epocs 2 (did you mean --epochs?)"),
    (["train", "--data", "d", "--lr-early=0.1", "--warmpu=0.1"],
     "imet train: error: unrecognized arguments: --warmpu=0.1 (did you mean --warmup?)"),
    # ensemble weights are --member-weights: --weights is imet train's ImageNet weights file
    (["predict", "--data", "d", "--runs", "a", "b", "--weights", "1", "2"],
     "imet predict: error: unrecognized arguments: --weights 1 2 (did you mean "
     "--member-weights?)"),
    (["kaggle", "render", "--ownr", "me"],
     "imet kaggle render: error: unrecognized arguments: --ownr me (did you mean --owner?)"),
    (["trian"], "did you mean 'train'?"),
    (["kaggle", "rendr"], "did you mean 'render'?"),
    (["predict", "--data", "d", "--runs", "r", "--ensemble", "meen"],
     "imet predict: error: argument --ensemble: invalid choice: 'meen' (choose from 'mean', "
     "'rank'); did you mean 'mean'?"),
])
def test_a_mistyped_name_gets_its_close_match(argv, line, capsys):
    assert refused(argv, capsys).endswith(line)


def test_a_mistyped_arch_gets_its_close_match(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--arch", "seresnext50_32x4d"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("imet train: error: --arch seresnext50_32x4d: unknown architecture; "
                           "did you mean se_resnext50_32x4d? the names are ")


def test_train_help_is_the_options_not_a_wall_of_usage(capsys):
    text = help_text(["train"], capsys)
    assert text.startswith("usage: imet train --data DIR --out DIR [--config FILE] [OPTION ...]\n")
    assert "fingerprint FINGERPRINT" not in text and "-fingerprint" not in text
    assert "--member-weights" in help_text(["predict"], capsys)
    assert "--member-weights" in help_text(["pseudo-label"], capsys)


def test_kaggle_run_help_says_how_a_rehearsal_replaces_the_arguments(capsys):
    text = " ".join(help_text(["kaggle", "run"], capsys).split())
    assert "IMET_KERNEL_ARGS, when set, replaces the kernel's own arguments" in text


def settings_of(*argv):
    argv = ["train", *argv]
    return given_settings(build_parser(argv).parse_args(argv))


def test_train_config_is_toml_and_json_is_still_read(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text('epochs = 7\nhead-epochs = 2\nlr = 0.01\narch = "resnet18"\n'
                    'input_root = ["/kaggle/input", "/data"]\namp = false\n')
    assert settings_of("--config", str(toml), "--lr", "0.002") == {
        "epochs": 7, "head-epochs": 2, "lr": 0.002, "arch": "resnet18",
        "input_root": ["/kaggle/input", "/data"], "amp": False}
    # the older JSON object, whatever the file is called
    old = tmp_path / "train.cfg"
    old.write_text(json.dumps({"epochs": 3, "image-size": 64}))
    assert settings_of("--config", str(old)) == {"epochs": 3, "image-size": 64}


@pytest.mark.parametrize("text, says", [
    ("epochs = ", "not valid TOML"),
    ('{"epochs": }', "not valid JSON"),
    ("epocs = 3", "unknown setting 'epocs'; did you mean epochs?"),
    ("head_epoch = 0", "unknown setting 'head_epoch'; did you mean head_epochs?"),
    ("[train]\nepochs = 3", "'train' is a table; write the settings at the top"),
    ("lr = [0.1, 0.2]", "--lr takes one value, got [0.1, 0.2]"),
])
def test_a_bad_config_is_one_line_naming_the_file(tmp_path, capsys, text, says):
    config = tmp_path / "train.toml"
    config.write_text(text)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--config", str(config)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"imet train: error: {config}") and says in line, line
    assert not (tmp_path / "o").exists()


def test_member_weights_are_one_per_run(tmp_path, capsys):
    assert main(["predict", "--data", str(tmp_path), "--runs", "a", "b",
                 "--member-weights", "1"]) == 2
    assert capsys.readouterr().err.strip() == ("imet predict: error: --member-weights: 1 weights "
                                               "for 2 runs; give one per run")


def test_a_plans_mistyped_flag_gets_its_close_match():
    from imet.commands.kaggle import check_args
    from imet.errors import UserError
    with pytest.raises(UserError, match=r"plan.toml: train_args: imet train has no flag "
                       r"'--epocs' \(did you mean --epochs\?\); see"):
        check_args("train", ["--epocs", "2"], "plan.toml: train_args")


def test_the_doctor_says_what_it_checked(mini_data, tmp_path, capsys):
    base = ["doctor", "--data", str(mini_data), "--out", str(tmp_path), "--device", "cpu",
            "--accelerator", "none"]
    assert main([*base, "--kernel", "validation"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "imet doctor: nothing blocks the validation session"
    assert main([*base, "--arch", "tiny_cnn", "--kernel", "trainer"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "imet doctor: nothing blocks the trainer session; it can train tiny_cnn as configured"
    assert main(base) == 0
    assert "add --arch NAME" in capsys.readouterr().out.splitlines()[-1]


def test_a_local_doctor_lists_only_this_runs_earlier_outputs(mini_data, tmp_path):
    from imet.kaggle.session import Settings, diagnose

    def earlier(out):
        report = diagnose(Settings(data=mini_data, out=out, device="cpu"))
        return next(line for line in report.lines if line.startswith("previous output:"))
    # a checkout where `make demo` ran: its runs are not this run's past
    (tmp_path / "demo" / "work" / "trainer" / "v1").mkdir(parents=True)
    (tmp_path / "demo" / "work" / "trainer" / "v1" / "run.json").write_text("{}")
    assert earlier(tmp_path).split(":", 1)[1].strip().startswith("none, a new run")
    run = tmp_path / "demo" / "work" / "trainer" / "v1"
    assert earlier(run).endswith(str(run))


def test_an_unknown_accelerator_in_the_settings_names_the_file_and_key(tmp_path, capsys):
    config = tmp_path / "run.toml"
    out = tmp_path / "kernels"
    for text, line in [
        ('accelerator = "NvidiaTeslaT5"', f"{config}: accelerator 'NvidiaTeslaT5' is not a "
         "Kaggle accelerator; did you mean NvidiaTeslaT4? use one of none, NvidiaTeslaT4"),
        ('[accelerator]\ninference = "GPU"', f"{config}: accelerator.inference 'GPU' is not a "
         "Kaggle accelerator; use one of none"),
        ('[accelerator]\ntrainr = "NvidiaL4"', f"{config}: accelerator.trainr: no kernel "
         "'trainr'; did you mean trainer? the kernels are inference, trainer, validation"),
    ]:
        config.write_text(f'owner = "me"\n{text}\n')
        assert main(["kaggle", "render", "--config", str(config), "--kernels",
                     str(REPO_KERNELS), "--out", str(out)]) == 2
        (err,) = capsys.readouterr().err.strip().splitlines()
        assert err.startswith(f"imet kaggle: error: {line}"), err
        assert not out.exists()


def test_chain_without_a_kaggle_sign_in_says_so_once(tmp_path):
    kernel = tmp_path / "trainer-f0"
    kernel.mkdir()
    (kernel / "trainer.py").write_text("")
    (kernel / "kernel-metadata.json").write_text(json.dumps({
        "id": "someone/imet-trainer-f0", "title": "imet-trainer-f0", "code_file": "trainer.py",
        "language": "python", "kernel_type": "script", "enable_internet": False,
        "enable_gpu": True, "dataset_sources": [], "competition_sources": [],
        "kernel_sources": []}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"),
               KAGGLE_CONFIG_DIR=str(tmp_path / ".kaggle"))
    proc = subprocess.run([sys.executable, "-m", "imet", "kaggle", "chain", str(kernel),
                           "--out", str(tmp_path / "chain")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout.count("Authentication required") == 1, proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("imet kaggle: error: kaggle client could not authenticate")
