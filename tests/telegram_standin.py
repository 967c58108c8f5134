"""A stand-in Telegram Bot API server on 127.0.0.1 for tests: the real python-telegram-bot
talks to it over HTTP and it records every request.

Scenarios (`server.scenario`, applied to the next `server.count` requests, then "ok";
count None = for good; `only` limits it to some Bot API methods): "ok", "429" (flood
control with `retry_after`), "500", "hang" (no answer until the server stops), "403" (bot
blocked), "401" (bad token), "chat_not_found", "bad_html" (Telegram's HTML parser refuses
the text). A connection refused needs no server: `refused_url()`.

getUpdates behaves like Telegram's: `push()` queues an incoming message; a call returns the
queued updates from `offset` on, or waits up to its `timeout` for one; an offset confirms
(forgets) every update below it, a negative one keeps only the last -offset. One poller per
bot: a getUpdates that arrives while another still waits ends the waiting one with 409
Conflict ("terminated by other getUpdates request"), as Telegram does; `conflicts` counts them.

The bot's messages are kept per chat: editMessageText changes one, pinChatMessage and
unpinChatMessage pin and unpin one, and getChat answers a ChatFullInfo whose pinned_message is
the most recent pinned message by sending date (Telegram's rule), as it reads now."""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl

from local_server import LocalServer


BOT = {"id": 123456789, "is_bot": True, "first_name": "imet stand-in",
       "username": "imet_standin_bot"}


@dataclass
class Recorded:
    method: str
    token: str
    params: dict
    files: dict = field(default_factory=dict)
    status: int = 200
    time: float = field(default_factory=time.monotonic)


CONFLICT = (409, {"ok": False, "error_code": 409,
                  "description": "Conflict: terminated by other getUpdates request; make sure "
                                 "that only one bot instance is running"})


class _Refused(Exception):
    """Telegram's error answer (status, body) to one request."""


_FAILURES = {
    "429": (429, {"ok": False, "error_code": 429,
                  "description": "Too Many Requests: retry after {retry_after}",
                  "parameters": {"retry_after": "{retry_after}"}}),
    "500": (500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}),
    "403": (403, {"ok": False, "error_code": 403,
                  "description": "Forbidden: bot was blocked by the user"}),
    "401": (401, {"ok": False, "error_code": 401, "description": "Unauthorized"}),
    "bad_html": (400, {"ok": False, "error_code": 400,
                       "description": "Bad Request: can't parse entities: Unsupported start "
                                      "tag \"x\" at byte offset 3"}),
    "chat_not_found": (400, {"ok": False, "error_code": 400,
                             "description": "Bad Request: chat not found"}),
}


class TelegramStandin(LocalServer):
    def __init__(self, scenario: str = "ok", count: int | None = None, retry_after: int = 1,
                 only: tuple[str, ...] | None = None):
        self.scenario = scenario
        self.count = count
        self.only = only
        self.retry_after = retry_after
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._message_id = 0
        self._updates: list[dict] = []
        self._update_id = 700
        self.confirmed = 0                  # every update_id below this is acknowledged
        self._arrived = threading.Condition(self._lock)
        self._poller = 0                    # the getUpdates call allowed to wait now
        self.conflicts = 0                  # getUpdates calls ended with 409 Conflict
        self.messages: dict[tuple[str, int], dict] = {}  # (chat, message_id) -> the bot's
        self.pinned: dict[str, list[int]] = {}           # chat -> pinned message ids
        super().__init__(_handler_for(self))

    @property
    def api_url(self) -> str:
        return f"{self.url}/bot"

    def release_waiters(self) -> None:
        self._release.set()
        with self._arrived:
            self._arrived.notify_all()

    def set(self, scenario: str, count: int | None = None,
            only: tuple[str, ...] | None = None) -> None:
        with self._lock:
            self.scenario, self.count, self.only = scenario, count, only

    def push(self, text: str, chat_id: int = 99, date: float | None = None) -> int:
        """An incoming message from `chat_id`, sent at `date` (default now); its update_id."""
        with self._arrived:
            self._update_id += 1
            self._message_id += 1
            self._updates.append({"update_id": self._update_id, "message": {
                "message_id": self._message_id, "date": int(time.time() if date is None
                                                            else date),
                "chat": {"id": chat_id, "type": "private"}, "text": text,
                "from": {"id": chat_id, "is_bot": False, "first_name": "user"}}})
            self._arrived.notify_all()
            return self._update_id

    def pending(self) -> list[int]:
        """update_ids not yet acknowledged."""
        with self._lock:
            return [u["update_id"] for u in self._updates]

    def replies(self, chat_id: int | None = None) -> list[str]:
        """Texts and captions of the delivered messages (to `chat_id` when given)."""
        return [r.params.get("text", r.params.get("caption", "")) for r in self.sent()
                if r.method in ("sendMessage", "sendPhoto")
                and (chat_id is None or str(r.params.get("chat_id")) == str(chat_id))]

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Poll `predicate()` until true or `timeout` seconds passed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    def methods(self, status: int | None = 200) -> list[str]:
        return [r.method for r in self.requests if status is None or r.status == status]

    def sent(self) -> list[Recorded]:
        """Delivered sendMessage/sendPhoto requests, in order."""
        return [r for r in self.requests if r.status == 200
                and r.method in ("sendMessage", "sendPhoto")]

    def _current(self, method: str) -> str:
        with self._lock:
            if self.only is not None and method not in self.only:
                return "ok"
            scenario = self.scenario
            if self.count is not None:
                if self.count <= 0:
                    scenario = "ok"
                else:
                    self.count -= 1
            return scenario

    def answer(self, method: str, params: dict) -> tuple[int, dict | None]:
        scenario = self._current(method)
        if scenario == "hang":
            self._release.wait()
            return 0, None
        if scenario in _FAILURES:
            status, body = _FAILURES[scenario]
            text = json.dumps(body).replace('"{retry_after}"', str(self.retry_after))
            return status, json.loads(text.replace("{retry_after}", str(self.retry_after)))
        try:
            return 200, {"ok": True, "result": self._result(method, params)}
        except _Refused as refused:
            return refused.args

    def pinned_text(self, chat_id: int | str) -> str | None:
        """The text getChat shows as the chat's pinned message now."""
        with self._lock:
            message = self._pinned_message(str(chat_id))
            return message and message.get("text")

    def _get_updates(self, params: dict) -> list[dict]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        end = time.monotonic() + float(params.get("timeout") or 0)
        with self._arrived:
            self._poller += 1
            me = self._poller
            self._arrived.notify_all()  # a waiting poller is terminated by this one
            if offset < 0:
                self._updates = self._updates[offset:]
            elif offset:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                self.confirmed = max(self.confirmed, offset)
            while not self._updates and not self._release.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
                if self._poller != me:
                    self.conflicts += 1
                    raise _Refused(*CONFLICT)
            return list(self._updates[:limit])

    def _pinned_message(self, chat: str) -> dict | None:
        pinned = [self.messages[(chat, i)] for i in self.pinned.get(chat, [])
                  if (chat, i) in self.messages]
        return max(pinned, key=lambda m: (m["date"], m["message_id"]), default=None)

    def _chat_id(self, params: dict) -> str:
        return str(params.get("chat_id", "1"))

    def _message(self, params: dict, action: str) -> dict:
        key = (self._chat_id(params), int(params.get("message_id") or 0))
        if key not in self.messages:
            raise _Refused(400, {"ok": False, "error_code": 400,
                                 "description": f"Bad Request: message to {action} not found"})
        return self.messages[key]

    def _chat_result(self, method: str, params: dict):
        """getChat, pinChatMessage, unpinChatMessage, editMessageText (the lock held)."""
        chat = self._chat_id(params)
        if method == "getChat":
            full = {"id": int(chat) if chat.lstrip("-").isdigit() else 1, "type": "private",
                    "first_name": "user", "accent_color_id": 0, "max_reaction_count": 11,
                    "accepted_gift_types": {"unlimited_gifts": True, "limited_gifts": True,
                                            "unique_gifts": True, "premium_subscription": True,
                                            "gifts_from_channels": True}}
            pinned = self._pinned_message(chat)
            if pinned is not None:
                full["pinned_message"] = pinned
            return full
        if method == "pinChatMessage":
            message = self._message(params, "pin")
            ids = self.pinned.setdefault(chat, [])
            ids[:] = [i for i in ids if i != message["message_id"]] + [message["message_id"]]
            return True
        if method == "unpinChatMessage":
            ids = self.pinned.get(chat, [])
            if params.get("message_id"):
                ids[:] = [i for i in ids if i != int(params["message_id"])]
            elif ids:
                ids.pop()  # without an id: the most recent one
            return True
        message = self._message(params, "edit")
        if message.get("text") == params.get("text", ""):
            raise _Refused(400, {"ok": False, "error_code": 400, "description":
                                 "Bad Request: message is not modified: specified new message "
                                 "content and reply markup are exactly the same as a current "
                                 "content and reply markup of the message"})
        message.update(text=params.get("text", ""), edit_date=int(time.time()))
        return message

    def _result(self, method: str, params: dict):
        if method == "getUpdates":
            return self._get_updates(params)
        if method == "getMe":
            return BOT
        if method in ("getChat", "pinChatMessage", "unpinChatMessage", "editMessageText"):
            with self._lock:
                return self._chat_result(method, params)
        with self._lock:
            self._message_id += 1
            message_id = self._message_id
        chat = {"id": int(params.get("chat_id", 1)) if str(params.get("chat_id", "1"))
                .lstrip("-").isdigit() else 1, "type": "private"}
        message = {"message_id": message_id, "date": int(time.time()), "chat": chat}
        if method == "sendPhoto":
            message["photo"] = [{"file_id": "p", "file_unique_id": "p", "width": 10,
                                 "height": 10}]
            if params.get("caption"):
                message["caption"] = params["caption"]
        else:
            message["text"] = params.get("text", "")
        message["from"] = BOT
        with self._lock:
            self.messages[(self._chat_id(params), message_id)] = message
        return message


def _parse(content_type: str, body: bytes) -> tuple[dict, dict]:
    if content_type.startswith("multipart/form-data"):
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        params, files = {}, {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename() is not None:
                files[name] = payload
            else:
                params[name] = payload.decode("utf-8")
        return params, files
    if content_type.startswith("application/json"):
        return json.loads(body or b"{}"), {}
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True)), {}


def _handler_for(standin: TelegramStandin):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            _, _, rest = self.path.partition("/bot")
            token, _, method = rest.partition("/")
            params, files = _parse(self.headers.get("Content-Type", ""), body)
            record = Recorded(method, token, params, files)
            with standin._lock:
                standin.requests.append(record)
            status, payload = standin.answer(method, params)
            record.status = status
            if payload is None:
                self.close_connection = True
                return
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a close)
                self.close_connection = True

        do_GET = do_POST  # noqa: N815

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler


def refused_url() -> str:
    """A Bot API URL on a local port where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/bot"
