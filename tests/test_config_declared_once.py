"""Each `imet train` option is declared once, on its TrainConfig field: a field added there is a
flag in `--help`, in the fingerprint or not as declared, and a flag the rendered kernels carry;
no option reaches `imet train`'s parser any other way."""
import dataclasses
import re
from pathlib import Path

import pytest

import imet.config
from imet.cli import build_parser, main
from imet.config import TrainConfig, flag_of, given_settings, option, train_parser
from imet.errors import UserError
from imet.kaggle.render import Settings, plan_kernels, read_setting

KERNELS = Path(__file__).resolve().parents[1] / "kernels"


def with_probe_fields():
    """TrainConfig with two more options: one that decides the result, one that does not."""
    return dataclasses.make_dataclass("TrainConfig", [
        ("probe_steps", int, option(7, "steps of the probe")),
        ("probe_cache_mb", int, option(16, "MB the probe keeps", fingerprint=False)),
    ], bases=(TrainConfig,))


def flags_in_usage(usage: str) -> set[str]:
    return set(re.findall(r"\[(--[\w-]+)", usage))


def trainer_args(settings: Settings) -> list[str]:
    planned = plan_kernels(KERNELS, "alice", settings, {})
    script = planned["trainer-f0"]["trainer.py"]
    return read_setting(script, "DEFAULT_TRAIN_ARGS", "trainer-f0")


def test_a_field_added_to_trainconfig_is_an_option_everywhere(monkeypatch, capsys):
    declared = with_probe_fields()
    monkeypatch.setattr(imet.config, "TrainConfig", declared)

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--probe-steps PROBE_STEPS steps of the probe [7]" in text
    assert "--probe-cache-mb PROBE_CACHE_MB MB the probe keeps [16]" in text

    # The fingerprint holds what the declaration says decides the result, and only that.
    assert declared(probe_steps=8).fingerprint() != declared().fingerprint()
    assert declared(probe_cache_mb=64).fingerprint() == declared().fingerprint()
    # A flag on the command line and a value in a JSON config arrive typed by the declaration.
    argv = ["train", "--probe-steps", "9"]
    assert given_settings(build_parser(argv).parse_args(argv))["probe_steps"] == 9
    assert declared.from_dict({"probe-cache-mb": "32"}).probe_cache_mb == 32

    # A rendered trainer kernel carries it, and the kernel side reads it back.
    args = trainer_args(Settings(train_args=["--probe-steps=9", "--batch-size", "8"]))
    assert args == ["--fold", "0", "--probe-steps=9", "--batch-size", "8"]
    assert train_parser().parse_known_args(args) == (train_parser().parse_args(args), [])
    assert train_parser().parse_args(args).probe_steps == 9


def test_an_undeclared_flag_is_refused_by_the_same_parser():
    for args in (["--probe-steps", "9"], ["--epocs", "2"]):
        with pytest.raises(UserError, match=f"imet train has no flag '{args[0]}'"):
            trainer_args(Settings(train_args=args))
    with pytest.raises(UserError, match="argument --epochs: invalid int value: 'many'"):
        trainer_args(Settings(train_args=["--epochs", "many"]))


def test_no_option_reaches_imet_train_but_through_a_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    listed = set(re.findall(r"^  (--[\w-]+)", capsys.readouterr().out, re.M))
    fields = {flag_of(spec.name) for spec in dataclasses.fields(TrainConfig)}
    # The fingerprints imet fills in itself are accepted, but --help does not offer them.
    internal = {flag_of(spec.name) for spec in dataclasses.fields(TrainConfig)
                if spec.metadata["internal"]}
    assert internal == {"--extra-fingerprint", "--init-fingerprint", "--teacher-fingerprint"}
    assert listed == (fields - internal) | {"--config"}
    assert {action.option_strings[0] for action in train_parser()._actions} == \
        fields | {"--config"}
    assert train_parser().parse_args(["--init-fingerprint", "abc"]).init_fingerprint == "abc"
