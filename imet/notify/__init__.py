"""Telegram notifications for imet runs (python-telegram-bot 22), as an EventBus subscriber.

`build_notifier()` is the one entry point: it returns a subscriber, or None when
notifications are off (asked off, not rank 0, or not configured — then one log line says
why and training goes on). Nothing here imports telegram until a notifier is built."""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping

from imet.errors import UserError

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
EVERY_MIN_VAR = "IMET_TELEGRAM_EVERY_MIN"
_SENDER_OPTIONS = ("min_interval_s", "connect_timeout_s", "read_timeout_s", "max_queue",
                   "max_attempts", "backoff_s", "breaker_threshold", "breaker_cooldown_s",
                   "max_retry_after_s", "close_timeout_s")
_LISTENER_OPTIONS = ("poll_timeout_s", "start_attempts", "started")


def build_notifier(mode: str = "auto", rank: int = 0, env: Mapping[str, str] | None = None,
                   kernel: str | None = None,
                   request_stop: Callable[[str], None] | None = None, **options: Any):
    """A TelegramNotifier, or None.

    mode: "auto"/"on" send when IMET_TELEGRAM_TOKEN and IMET_TELEGRAM_CHAT_ID are found
    (environment, then Kaggle Secrets); "off" never sends. rank: only rank 0 sends.
    kernel: a label for the run-start message when the event does not carry one.
    request_stop: the run's stop request (the engine's StopRequest.request); when given, the
    notifier also answers the chat's /status, /plot, /stop (imet.notify.listener).
    options: TelegramSender settings (see `_SENDER_OPTIONS`), UpdateListener settings
    (`_LISTENER_OPTIONS`; backoff_s is shared with the sender) and TelegramNotifier
    settings (progress_every_s, plot_every_s, send_plots, send_checkpoints, plot_renderer).
    """
    if mode not in MODES:
        raise UserError(f"--notify {mode!r} is not a notify mode; use one of {', '.join(MODES)}")
    if mode == "off" or int(rank) != 0:
        return None
    env = os.environ if env is None else env
    from imet.notify.config import ConfigProblem, load_config
    try:
        config = load_config(env)
    except ConfigProblem as problem:
        log.info("Telegram notifications off: %s", problem)
        return None
    try:
        import telegram  # noqa: F401  (bundled wheel; its absence must not stop training)
    except ImportError:
        log.info("Telegram notifications off: python-telegram-bot is not installed "
                 "(pip install 'python-telegram-bot>=22,<23')")
        return None
    from imet.notify.sender import TelegramSender
    from imet.notify.subscriber import TelegramNotifier
    sender_kw = {k: options.pop(k) for k in _SENDER_OPTIONS if k in options}
    if "progress_every_s" not in options and env.get(EVERY_MIN_VAR):
        try:
            options["progress_every_s"] = 60.0 * float(env[EVERY_MIN_VAR])
        except ValueError:
            raise UserError(f"{EVERY_MIN_VAR}={env[EVERY_MIN_VAR]!r} is not a number of "
                            "minutes; set e.g. 15") from None
    listener = None
    if request_stop is not None:
        from imet.notify.commands import RunCommands
        from imet.notify.listener import UpdateListener
        listen_kw = {k: options.pop(k) for k in _LISTENER_OPTIONS if k in options}
        if "backoff_s" in sender_kw:
            listen_kw["backoff_s"] = sender_kw["backoff_s"]
        listener = UpdateListener(config, RunCommands(request_stop), **listen_kw)
    sender = TelegramSender(config, listen=listener, **sender_kw)
    log.info("Telegram notifications on (chat %s, settings from %s)", config.chat_id,
             config.source)
    return TelegramNotifier(sender, kernel=kernel,
                            commands=listener.commands if listener else None, **options)

