"""`python -m imet notify-test`: send one Telegram message to check the token and chat id."""
from __future__ import annotations

import argparse
import asyncio
import html
import os
import socket
import time

from imet.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Send one Telegram message with the settings a training run would use "
        "(IMET_TELEGRAM_TOKEN, IMET_TELEGRAM_CHAT_ID and optional IMET_TELEGRAM_API_URL, "
        "from the environment or Kaggle Secrets) and say what is wrong when it fails.")
    parser.add_argument("--text", default=None,
                        help="message to send (default: a short test line naming this host)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for Telegram on each request (default: 10)")


def run(args: argparse.Namespace) -> int:
    from imet.notify.config import ConfigProblem, load_config
    try:
        config = load_config(os.environ)
    except ConfigProblem as problem:
        raise UserError(str(problem)) from None
    try:
        import telegram  # noqa: F401
    except ImportError:
        raise UserError("python-telegram-bot is not installed; run "
                        "pip install 'python-telegram-bot>=22,<23'") from None
    text = args.text or (f"✅ imet notify-test from {socket.gethostname()} at "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: this chat will receive "
                         "imet's training reports.")
    username = asyncio.run(_send(config, html.escape(text, quote=False), args.timeout))
    print(f"imet notify-test: sent a message to chat {config.chat_id} as @{username} "
          f"(settings from {config.source})")
    return 0


async def _send(config, text: str, timeout: float) -> str:
    from telegram.error import TelegramError
    from imet.notify.config import DEFAULT_API_URL
    from imet.notify.bot import explain, make_bot
    bot = make_bot(config, timeout, timeout)
    step = "checking the token (getMe)"
    try:
        await bot.initialize()
        step = f"sending to chat {config.chat_id}"
        await bot.send_message(config.chat_id, text, parse_mode="HTML")
        return bot.username
    except TelegramError as err:
        raise UserError(f"{step} failed: "
                        f"{explain(err, config.api_url != DEFAULT_API_URL)}") from None
    except Exception as err:  # anything else still gets one clean line, token scrubbed
        raise UserError(config.scrub(f"{step} failed: {type(err).__name__}: {err}")) from None
    finally:
        try:
            await asyncio.wait_for(bot.shutdown(), timeout)
        except Exception:
            pass
