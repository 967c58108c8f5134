"""Where the Telegram settings come from, what happens when they are missing, and
`python -m imet notify-test` against the stand-in Bot API server."""
from __future__ import annotations

import logging
import sys
import threading
import types

import pytest
from telegram_standin import TelegramStandin, refused_url

from imet.cli import main
from imet.errors import UserError
from imet.observe import telegram as config
from imet.observe.telegram import ConfigProblem, TelegramConfig, build_notifier, load_config

TOKEN = "987654321:AAGsecretTokenForConfigTests_zyxwvutsrq"
SECRET = TOKEN.split(":")[1]
VARS = ("IMET_TELEGRAM_TOKEN", "IMET_TELEGRAM_CHAT_ID", "IMET_TELEGRAM_API_URL")


@pytest.fixture
def kaggle_secrets(monkeypatch):
    """A stand-in for Kaggle's `kaggle_secrets` module (only exists inside Kaggle kernels):
    `secrets` holds what it answers; a value that is an exception is raised; "hang" blocks."""
    secrets: dict = {}
    release = threading.Event()

    class UserSecretsClient:
        def get_secret(self, label):
            value = secrets.get(label, KeyError(label))
            if value == "hang":
                release.wait()
            if isinstance(value, BaseException):
                raise value
            return value

    module = types.ModuleType("kaggle_secrets")
    module.UserSecretsClient = UserSecretsClient
    monkeypatch.setitem(sys.modules, "kaggle_secrets", module)
    yield secrets
    release.set()


def test_environment_config_and_repr_without_token():
    cfg = load_config({"IMET_TELEGRAM_TOKEN": f" {TOKEN} ", "IMET_TELEGRAM_CHAT_ID": "-100"},
                      use_kaggle_secrets=False)
    assert cfg.token == TOKEN and cfg.chat_id == "-100"
    assert cfg.api_url == "https://api.telegram.org/bot"
    assert TOKEN not in repr(cfg) and SECRET not in repr(cfg) and "<set>" in repr(cfg)
    assert cfg.scrub(f"POST https://x/bot{TOKEN}/sendMessage and {SECRET}") == \
        "POST https://x/bot<token>/sendMessage and <token>"


@pytest.mark.parametrize("given, used", [
    ("http://127.0.0.1:8081", "http://127.0.0.1:8081/bot"),
    ("http://127.0.0.1:8081/bot/", "http://127.0.0.1:8081/bot"),
    ("https://proxy.example/tg/bot{token}/", "https://proxy.example/tg/bot{token}/"),
])
def test_self_hosted_api_url_is_normalised(given, used):
    cfg = load_config({"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "1",
                       "IMET_TELEGRAM_API_URL": given}, use_kaggle_secrets=False)
    assert cfg.api_url == used


@pytest.mark.parametrize("env, problem", [
    ({}, "IMET_TELEGRAM_TOKEN is not set"),
    ({"IMET_TELEGRAM_TOKEN": TOKEN}, "IMET_TELEGRAM_CHAT_ID is not set"),
    ({"IMET_TELEGRAM_TOKEN": f"'{TOKEN}'", "IMET_TELEGRAM_CHAT_ID": "1"},
     "does not look like a bot token"),
])
def test_missing_or_malformed_settings_say_what_to_do(env, problem):
    with pytest.raises(ConfigProblem, match=problem) as info:
        load_config(env, use_kaggle_secrets=False)
    assert SECRET not in str(info.value)


def test_not_configured_means_one_log_line_and_no_notifier(caplog):
    caplog.set_level(logging.DEBUG, logger="imet")
    assert build_notifier("auto", env={}) is None
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == ["Telegram notifications off: IMET_TELEGRAM_TOKEN is not set: set it in the "
                     "environment (export IMET_TELEGRAM_TOKEN=...), or attach a Kaggle secret of "
                     "that label to the kernel (editor: Add-ons > Secrets), or attach the private "
                     "dataset <owner>/imet-telegram holding imet-telegram.json (README: "
                     "Telegram); a new bot's token comes from @BotFather"]


def test_in_a_kernel_a_missing_secret_is_said_to_be_unattached(kaggle_secrets):
    """On Kaggle the bot most often exists and its secret is only not attached to this kernel:
    the line says how to attach it before how to make a bot."""
    with pytest.raises(ConfigProblem) as info:
        load_config({})
    assert str(info.value).startswith(
        "IMET_TELEGRAM_TOKEN is not set: no Kaggle secret labelled IMET_TELEGRAM_TOKEN is "
        "attached to this kernel: in the kernel's editor, Add-ons > Secrets, add it or switch "
        "the existing one on, or attach the private dataset <owner>/imet-telegram holding "
        "imet-telegram.json (README: Telegram); ")
    kaggle_secrets["IMET_TELEGRAM_TOKEN"] = TOKEN
    with pytest.raises(ConfigProblem, match="no Kaggle secret labelled IMET_TELEGRAM_CHAT_ID is "
                       "attached to this kernel.*getUpdates"):
        load_config({})


def test_bad_mode_is_a_user_error():
    with pytest.raises(UserError, match="use one of auto, on, off"):
        build_notifier("telegram", env={})


def test_kaggle_secrets_fill_in_what_the_environment_lacks(kaggle_secrets):
    kaggle_secrets.update({"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "77"})
    cfg = load_config({})
    assert (cfg.token, cfg.chat_id, cfg.source) == (TOKEN, "77", "Kaggle Secrets")
    cfg = load_config({"IMET_TELEGRAM_CHAT_ID": "5"})
    assert cfg.chat_id == "5"


def test_kaggle_secrets_failing_or_hanging_is_tolerated(kaggle_secrets, monkeypatch, caplog):
    kaggle_secrets["IMET_TELEGRAM_TOKEN"] = ConnectionError("no internet")
    assert build_notifier("auto", env={}) is None
    monkeypatch.setattr(config, "KAGGLE_SECRETS_TIMEOUT_S", 0.2)
    kaggle_secrets["IMET_TELEGRAM_TOKEN"] = "hang"
    with pytest.raises(ConfigProblem, match="IMET_TELEGRAM_TOKEN is not set"):
        load_config({})


def test_config_is_not_picklable_into_logs_by_accident():
    cfg = TelegramConfig(token=TOKEN, chat_id="1")
    assert SECRET not in f"{cfg}" and SECRET not in str([cfg])


# ---- notify-test -------------------------------------------------------------------------

def run_notify_test(monkeypatch, capsys, env, *args):
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["notify-test", "--timeout", "1", *args])
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "Traceback" not in out + err
    return code, out, err


def test_notify_test_sends_one_message(monkeypatch, capsys):
    with TelegramStandin() as server:
        code, out, err = run_notify_test(monkeypatch, capsys, {
            "IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "31337",
            "IMET_TELEGRAM_API_URL": server.api_url}, "--text", "hello <world>")
        assert server.methods() == ["getMe", "sendMessage"]
        assert server.requests[1].params["text"] == "hello &lt;world&gt;"
        assert server.requests[1].params["chat_id"] == "31337"
    assert code == 0 and "sent a message to chat 31337 as @imet_standin_bot" in out


@pytest.mark.parametrize("scenario, message", [
    ("401", "checking the token (getMe) failed: the bot token was rejected"),
    ("chat_not_found", "sending to chat 31337 failed: chat not found; send your bot a message"),
    ("403", "the bot may not write to this chat"),
    ("hang", "did not answer in time"),
    ("refused", "cannot reach the Telegram API"),
])
def test_notify_test_explains_failures(monkeypatch, capsys, scenario, message):
    sends_only = ("sendMessage",) if scenario in ("chat_not_found", "403") else None
    with TelegramStandin(scenario=scenario, only=sends_only) as server:
        url = refused_url() if scenario == "refused" else server.api_url
        code, out, err = run_notify_test(monkeypatch, capsys, {
            "IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "31337",
            "IMET_TELEGRAM_API_URL": url})
    assert code == 2
    assert err.startswith("imet notify-test: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_notify_test_without_token(monkeypatch, capsys):
    code, out, err = run_notify_test(monkeypatch, capsys, {})
    assert code == 2 and "IMET_TELEGRAM_TOKEN is not set" in err


def test_notify_test_finds_the_token_in_the_attached_dataset(monkeypatch, capsys, tmp_path):
    """As `imet train` finds it: imet-telegram.json anywhere under --input-root."""
    write_dataset(tmp_path, {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": 4242})
    with TelegramStandin() as server:
        code, out, err = run_notify_test(monkeypatch, capsys, {
            "IMET_TELEGRAM_API_URL": server.api_url}, "--input-root", str(tmp_path))
        assert server.requests[1].params["chat_id"] == "4242"
    assert code == 0 and out.strip().endswith("(token from dataset)"), out + err
    (tmp_path / "datasets" / "me" / "imet-telegram" / "imet-telegram.json").unlink()
    code, out, err = run_notify_test(monkeypatch, capsys, {}, "--input-root", str(tmp_path))
    assert code == 2 and "the imet-telegram dataset at" in err and "has no imet-telegram.json" in err


def test_the_status_says_where_the_token_came_from_never_the_token(kaggle_secrets):
    from imet.observe.telegram import telegram_status
    env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "5"}
    status = telegram_status("auto", env=env)
    assert status.line() == "on: token from environment, chat 5"
    assert status.record() == {"on": True, "source": "environment"}
    # The chat id alone from Kaggle Secrets: the token still came from the environment.
    kaggle_secrets.update({"IMET_TELEGRAM_TOKEN": "111:" + "x" * 35, "IMET_TELEGRAM_CHAT_ID": "77"})
    status = telegram_status("auto", env={"IMET_TELEGRAM_TOKEN": TOKEN})
    assert status.line() == "on: token from environment, chat 77"
    kaggle_secrets["IMET_TELEGRAM_TOKEN"] = TOKEN
    status = telegram_status("on", env={})
    assert status.line() == "on: token from Kaggle Secrets, chat 77"
    assert status.record() == {"on": True, "source": "Kaggle Secrets"}
    assert telegram_status("off", env=env).line() == "off: --notify off"
    assert not telegram_status("auto", rank=1, env=env).on
    for status in (telegram_status("auto", env=env), telegram_status("on", env={})):
        assert SECRET not in f"{status} {status.line()} {status.record()}"


def test_a_training_session_says_it_first_and_run_json_keeps_it(mini_data, tmp_path,
                                                                 monkeypatch, capfd, request):
    """`imet train`'s bus: the session's first line says whether it reports and why not, and
    run.json records the same for each session (the source, never the token)."""
    import json

    from imet.commands.train import build_bus
    from imet.config import TrainConfig
    from imet.train.events import Handover, RunStart
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    from imet.kaggle.session import Settings, diagnose
    inputs = tmp_path / "input"
    write_dataset(inputs, {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "6"})
    server = TelegramStandin().__enter__()  # messages go out at once: close takes no time
    request.addfinalizer(lambda: server.__exit__(None, None, None))
    monkeypatch.setenv("IMET_TELEGRAM_API_URL", server.api_url)
    runs = []
    for session, env, roots in ((1, {}, []),
                                (2, {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "5"},
                                 [str(inputs)]),
                                (3, {}, [str(inputs)])):
        for name in VARS[:2]:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        config = TrainConfig(data=str(mini_data), out=str(tmp_path / "run"), arch="tiny_cnn",
                             pretrained=False, device="cpu", input_root=roots).validated()
        capfd.readouterr()
        bus = build_bus(config)
        assert capfd.readouterr().out == ""  # said when the run starts, not before a refusal
        bus.emit(RunStart(run_name="r", arch="tiny_cnn", fold=0, image_size=32,
                          session=session, resumed_from=None if session == 1 else 4,
                          device="cpu", total_steps=8, config={}, kernel=None, rank=0))
        runs.append(capfd.readouterr().out.splitlines())
        bus.emit(Handover(step=4, checkpoint="c.pt", reason="budget", next="again",
                          exit_code=75))
        bus.close()
    assert runs[0][0].startswith("imet: Telegram off: IMET_TELEGRAM_TOKEN is not set: set it")
    assert runs[1][0] == "imet: Telegram on: token from environment, chat 5"
    text = (tmp_path / "run" / "run.json").read_text()
    sessions = json.loads(text)["sessions"]
    assert sessions[0]["telegram"]["on"] is False
    assert sessions[0]["telegram"]["why"].startswith("IMET_TELEGRAM_TOKEN is not set")
    assert sessions[1]["telegram"] == {"on": True, "source": "environment"}
    assert runs[2][0] == "imet: Telegram on: token from dataset, chat 6"
    assert sessions[2]["telegram"] == {"on": True, "source": "dataset"}
    report = diagnose(Settings(data=mini_data, input_roots=[inputs], out=tmp_path))
    assert "telegram:         on: token from dataset, chat 6" in report.lines
    assert SECRET not in text and SECRET not in "".join(capfd.readouterr())


def write_dataset(root, values, folder=("datasets", "me", "imet-telegram")):
    """The dataset as Kaggle mounts it under /kaggle/input (here at the newer, deeper path)."""
    import json
    path = root.joinpath(*folder)
    path.mkdir(parents=True)
    text = values if isinstance(values, str) else json.dumps(values)
    (path / "imet-telegram.json").write_text(text)
    return path / "imet-telegram.json"


def test_the_dataset_comes_after_the_environment_and_kaggle_secrets(kaggle_secrets, tmp_path):
    from imet.observe.telegram import telegram_status
    other = "111222333:AAHdatasetTokenNotTheOther_abcdefghijk"
    write_dataset(tmp_path, {"IMET_TELEGRAM_TOKEN": other, "IMET_TELEGRAM_CHAT_ID": 31})
    cfg = load_config({}, input_roots=[tmp_path])
    assert (cfg.token, cfg.chat_id, cfg.source) == (other, "31", "dataset")
    status = telegram_status("auto", env={}, input_roots=[tmp_path])
    assert status.line() == "on: token from dataset, chat 31"
    assert status.record() == {"on": True, "source": "dataset"}
    kaggle_secrets["IMET_TELEGRAM_TOKEN"] = TOKEN
    cfg = load_config({}, input_roots=[tmp_path])
    assert (cfg.token, cfg.chat_id, cfg.source) == (TOKEN, "31", "Kaggle Secrets")
    cfg = load_config({"IMET_TELEGRAM_TOKEN": other.replace("111", "999"),
                       "IMET_TELEGRAM_CHAT_ID": "5"}, input_roots=[tmp_path])
    assert (cfg.source, cfg.chat_id) == ("environment", "5")


@pytest.mark.parametrize("content, problem", [
    ("{not json " + TOKEN, "is not a JSON object like"),
    ({"token": TOKEN}, "is not a JSON object like"),
    ({"IMET_TELEGRAM_TOKEN": f"'{TOKEN} '", "IMET_TELEGRAM_CHAT_ID": "1"},
     "IMET_TELEGRAM_TOKEN in .* does not look like a bot token.*quotes or spaces"),
    (None, "the imet-telegram dataset at .* has no imet-telegram.json"),
])
def test_a_broken_dataset_is_one_line_naming_it_never_quoting_it(tmp_path, content, problem):
    from imet.observe.telegram import telegram_status
    if content is None:
        (tmp_path / "imet-telegram").mkdir()
    else:
        write_dataset(tmp_path, content)
    with pytest.raises(ConfigProblem, match=problem) as info:
        load_config({}, use_kaggle_secrets=False, input_roots=[tmp_path])
    assert SECRET not in str(info.value) and "\n" not in str(info.value)
    status = telegram_status("auto", env={}, input_roots=[tmp_path])
    assert not status.on and SECRET not in status.line()


def test_notify_setup_checks_the_bot_then_writes_the_private_dataset(tmp_path):
    """The real kaggle client against the Kaggle stand-in, the real python-telegram-bot against
    the Bot API stand-in: one getMe, one message, then a private dataset holding the file the
    kernels read; again: a new version; a public dataset of that name, a rejected token and a
    chat that never pressed Start are one line each and write nothing."""
    import json
    import subprocess

    from kaggle_standin import KaggleStandin

    def setup(kaggle, server, **extra):
        env = {**kaggle.client_env(tmp_path / "home"), "NO_PROXY": "127.0.0.1",
               "no_proxy": "127.0.0.1", "IMET_TELEGRAM_TOKEN": TOKEN,
               "IMET_TELEGRAM_CHAT_ID": "42", "IMET_TELEGRAM_API_URL": server.api_url, **extra}
        import os
        proc = subprocess.run([sys.executable, "-m", "imet", "notify-setup", "--owner", "tester",
                               "--timeout", "5"], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=120)
        assert SECRET not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        return proc

    ref = "tester/imet-telegram"
    with KaggleStandin() as kaggle, TelegramStandin() as server:
        proc = setup(kaggle, server)
        assert proc.returncode == 0, proc.stderr
        assert server.methods() == ["getMe", "sendMessage"]
        dataset = kaggle.datasets[ref]
        assert dataset["private"] is True
        (stored,) = [f for f in dataset["versions"][-1]["files"]
                     if f["name"] == "imet-telegram.json"]
        assert json.loads(stored["data"]) == {"IMET_TELEGRAM_TOKEN": TOKEN,
                                              "IMET_TELEGRAM_CHAT_ID": "42"}
        assert setup(kaggle, server).returncode == 0 and len(dataset["versions"]) == 2
        assert "imet-telegram.json" not in "".join(str(p) for p in (tmp_path / "home").rglob("*"))
        dataset["private"] = False
        proc = setup(kaggle, server)
        assert proc.returncode == 2 and len(dataset["versions"]) == 2
        assert proc.stderr.strip().endswith("is public: it would publish the token; delete it "
                                            "on Kaggle (or make it private) and run this again")
        del kaggle.datasets[ref]
        for scenario, said, only in (("401", "the bot token was rejected", None),
                                     ("chat_not_found", "chat not found", ("sendMessage",)),
                                     ("403", "press Start", ("sendMessage",))):
            server.set(scenario, count=1, only=only)
            proc = setup(kaggle, server)
            assert proc.returncode == 2 and said in proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1 and ref not in kaggle.datasets
        proc = setup(kaggle, server, IMET_TELEGRAM_TOKEN=f'"{TOKEN}"')
        assert proc.returncode == 2 and "does not look like a bot token" in proc.stderr
        assert ref not in kaggle.datasets
