"""A stand-in for Kaggle's API on 127.0.0.1, for the real `kaggle` client (2.x, kagglesdk).

Why a stand-in: the tests cannot reach kaggle.com, and the point is to run the real client with
all its own checks (metadata validation, blob uploads, request building). With
`KAGGLE_API_ENVIRONMENT=LOCALHOST` the client sends every RPC as
`POST http://localhost/api/v1/<service>/<Method>` with a JSON body; `http_proxy` pointing here
brings those requests (and the blob PUTs to the `createUrl` we hand out) to this server.

Everything received is recorded: `calls` (service, method, JSON body, the basic-auth user — never
the key), `blobs` (token -> name, bytes), `datasets` and `kernels` (what a create/version/push made).
A pushed kernel version "runs" as `sessions[slug][version - 1]` scripts it: status polls answer
queued, running, then its status; its output lists and serves its files.
`GetKernel` answers the latest version number (how a restarted campaign tells whether its
push went through); `GetDataset` a dataset's `isPrivate` and `ListDatasetFiles` its latest
version's files (what chain and campaign ask of the imet-telegram dataset before a push); `in_flight`/`max_in_flight` count the sessions running at once; `kill_at`
SIGKILLs a client process right after the server handled one of its calls;
`refuse_self_source` answers a push that attaches the kernel's own output with an error; a
kernel source never pushed is answered as Kaggle answers it, in `invalidKernelSources`.
`handlers` maps a method name to a function(server, body) -> (status, json); replace or add
entries to script other answers (errors, statuses, outputs).

    with KaggleStandin() as kaggle:
        env = kaggle.client_env(tmp_path)   # proxy, LOCALHOST, a throwaway kaggle.json
        subprocess.run(["kaggle", "datasets", "create", "-p", folder], env={**os.environ, **env})
        kaggle.calls, kaggle.datasets["tester/imet-src"]
"""
from __future__ import annotations

import base64
import json
import os
import signal
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from local_server import LocalServer

USER = "tester"
FAKE_KEY = "standin-not-a-real-key"  # what the throwaway kaggle.json holds


def _not_found(message):
    return 404, {"code": 404, "message": message}


def start_blob_upload(server, body):
    token = uuid.uuid4().hex
    server.blobs[token] = {"name": body.get("name"), "content_length": body.get("contentLength"),
                           "type": body.get("type"), "data": None}
    return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}


def _dataset_files(server, files):
    out = []
    for f in files or []:
        blob = server.blobs.get(f.get("token"))
        if blob is None or blob["data"] is None:
            raise LookupError(f"file token {f.get('token')!r} was never uploaded")
        out.append({"name": blob["name"], "data": blob["data"]})
    return out


def get_dataset_status(server, body):
    ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
    if ref not in server.datasets:
        return _not_found(f"dataset {ref} not found")
    return 200, {"status": "READY"}


def get_dataset(server, body):
    ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
    if ref not in server.datasets:
        return _not_found(f"dataset {ref} not found")
    return 200, {"ref": ref, "currentVersionNumber": len(server.datasets[ref]["versions"]),
                 "isPrivate": bool(server.datasets[ref].get("private"))}


def list_dataset_files(server, body):
    """The files of the dataset's latest version, as Kaggle lists them (one page)."""
    ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
    if ref not in server.datasets:
        return _not_found(f"dataset {ref} not found")
    files = server.datasets[ref]["versions"][-1]["files"]
    return 200, {"datasetFiles": [{"ref": f"{ref}/{f['name']}", "name": f["name"],
                                   "totalBytes": len(f["data"] or b"")} for f in files],
                 "nextPageToken": ""}


def create_dataset(server, body):
    ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
    if ref in server.datasets:
        return 200, {"status": "error", "error": f"{ref} already exists"}
    try:
        files = _dataset_files(server, body.get("files"))
    except LookupError as exc:
        return 400, {"code": 400, "message": str(exc)}
    server.datasets[ref] = {"title": body.get("title"), "license": body.get("licenseName"),
                            "private": body.get("isPrivate"), "versions": [
                                {"notes": "Initial release", "files": files}]}
    return 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"}


def create_dataset_version(server, body):
    ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
    if ref not in server.datasets:
        return _not_found(f"dataset {ref} not found")
    request = body.get("body") or {}
    try:
        files = _dataset_files(server, request.get("files"))
    except LookupError as exc:
        return 400, {"code": 400, "message": str(exc)}
    server.datasets[ref]["versions"].append({"notes": request.get("versionNotes"), "files": files})
    return 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"}


def save_kernel(server, body):
    slug = body.get("slug") or ""
    if server.refuse_self_source and slug in (body.get("kernelDataSources") or []):
        return 200, {"ref": "", "url": "", "versionNumber": 0,
                     "error": f"kernel source {slug} cannot be attached to itself"}
    # Like Kaggle: a source that is no kernel yet (a kernel's own slug on its very first push)
    # is not attached, and the answer lists it.
    invalid = [ref for ref in body.get("kernelDataSources") or [] if not server.kernels.get(ref)]
    versions = server.kernels.setdefault(slug, [])
    versions.append(body)
    server.in_flight.add(slug)
    server.max_in_flight = max(server.max_in_flight, len(server.in_flight))
    return 200, {"ref": f"/code/{slug}", "url": f"http://localhost/code/{slug}",
                 "versionNumber": len(versions), "error": "", "invalidKernelSources": invalid}


def _session_script(server, slug):
    """What the latest pushed version of kernel `slug` ("owner/name", as pushed) does, as the
    test scripted it in `sessions[slug]` (one dict per push: status, failure, files {name:
    bytes}, log)."""
    versions = server.kernels.get(slug) or []
    script = server.sessions.get(slug) or []
    return len(versions), (script[len(versions) - 1] if len(versions) <= len(script) else {})


def _kernel_ref(body):
    return f"{body.get('userName')}/{body.get('kernelSlug')}"


def get_kernel_session_status(server, body):
    slug = _kernel_ref(body)
    version, script = _session_script(server, slug)
    if not version:
        return _not_found(f"kernel {slug} was never pushed")
    polls = server.polls[(slug, version)] = server.polls.get((slug, version), 0) + 1
    # Like Kaggle: queued, then running, then the end the script says.
    status = ("QUEUED", "RUNNING")[polls - 1] if polls <= 2 else script.get("status", "COMPLETE")
    if polls > 2:
        server.in_flight.discard(slug)
    return 200, {"status": status, "failureMessage": script.get("failure", "")}


def list_kernel_session_output(server, body):
    slug = _kernel_ref(body)
    version, script = _session_script(server, slug)
    if not version:
        return _not_found(f"kernel {slug} was never pushed")
    files = []
    for name, data in (script.get("files") or {}).items():
        path = f"/output/{slug}/{version}/{name}"
        server.files[path] = data
        files.append({"url": f"http://localhost{path}", "fileName": name})
    return 200, {"files": files, "log": script.get("log", "")}


def get_kernel(server, body):
    slug = f"{body.get('userName')}/{body.get('kernelSlug')}"
    versions = server.kernels.get(slug)
    if not versions:
        return _not_found(f"kernel {slug} not found")
    return 200, {"metadata": {"ref": slug, "currentVersionNumber": len(versions)},
                 "blob": {"source": versions[-1].get("text", ""), "language": "python",
                          "kernelType": "script"}}


TOKEN_USERS = {"standin-api-token": USER}  # what the server knows of today's API tokens


def introspect_token(server, body):
    user = TOKEN_USERS.get(body.get("token"))
    return 200, {"active": bool(user), "username": user or ""}


DEFAULT_HANDLERS = {
    "IntrospectToken": introspect_token,
    "GetKernelSessionStatus": get_kernel_session_status,
    "ListKernelSessionOutput": list_kernel_session_output,
    "StartBlobUpload": start_blob_upload,
    "GetDatasetStatus": get_dataset_status,
    "GetDataset": get_dataset,
    "ListDatasetFiles": list_dataset_files,
    "CreateDataset": create_dataset,
    "CreateDatasetVersion": create_dataset_version,
    "SaveKernel": save_kernel,
    "GetKernel": get_kernel,
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # the test output stays readable
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            return base64.b64decode(auth[6:]).decode(errors="replace").split(":", 1)[0]
        return "bearer" if auth.startswith("Bearer ") else None

    def do_GET(self):
        path = urlsplit(self.path).path
        standin = self.server.standin
        with standin.lock:
            standin.calls.append({"http": "GET", "path": path})
            data = standin.files.get(path)
        if data is None:
            return self._reply(404, {"code": 404, "message": f"no file {path}"})
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        path = urlsplit(self.path).path
        data = self._body()
        token = path.rsplit("/", 1)[-1]
        standin = self.server.standin
        with standin.lock:
            standin.calls.append({"http": "PUT", "path": path, "bytes": len(data)})
            blob = standin.blobs.get(token) if path.startswith("/upload/") else None
            if blob is None:
                return self._reply(404, {"code": 404, "message": "unknown upload"})
            blob["data"] = data
        self._reply(200, {})

    def do_POST(self):
        path = urlsplit(self.path).path
        raw = self._body()
        parts = path.strip("/").split("/")
        standin = self.server.standin
        if len(parts) != 4 or parts[:2] != ["api", "v1"]:
            return self._reply(404, {"code": 404, "message": f"no such endpoint {path}"})
        service, method = parts[2], parts[3]
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._reply(400, {"code": 400, "message": "body is not JSON"})
        with standin.lock:
            standin.calls.append({"http": "POST", "service": service, "method": method,
                                  "body": body, "user": self._user()})
            handler = standin.handlers.get(method)
            if handler is None:
                status, payload = 501, {"code": 501, "message": f"stand-in has no {method}"}
            else:
                status, payload = handler(standin, body)
            standin.maybe_kill(method)
        self._reply(status, payload)


class KaggleStandin(LocalServer):
    def __init__(self):
        self.calls: list[dict] = []
        self.blobs: dict[str, dict] = {}
        self.datasets: dict[str, dict] = {}
        self.kernels: dict[str, list] = {}
        self.sessions: dict[str, list[dict]] = {}  # what each pushed version does (scripted)
        self.polls: dict[tuple, int] = {}
        self.files: dict[str, bytes] = {}  # output files served by GET
        self.handlers = dict(DEFAULT_HANDLERS)
        self.lock = threading.Lock()
        self.in_flight: set[str] = set()  # pushed, and no poll has told its end yet
        self.max_in_flight = 0
        self.kill_at: tuple[str, int, int] | None = None  # (method, nth call, pid)
        self.refuse_self_source = False  # answer a push attaching its own output with an error
        super().__init__(_Handler)

    def maybe_kill(self, method: str) -> None:
        """SIGKILL the process `kill_at` names when its nth call of `method` has been
        handled and before it is answered: the server acted, the client never heard."""
        if self.kill_at is None or self.kill_at[0] != method:
            return
        if self.methods().count(method) == self.kill_at[1]:
            os.kill(self.kill_at[2], signal.SIGKILL)
            self.kill_at = None

    def pushes(self, slug: str) -> int:
        """SaveKernel calls received for kernel `slug` ("owner/name")."""
        return sum(1 for c in self.calls if c.get("method") == "SaveKernel"
                   and c["body"].get("slug") == slug)

    def methods(self) -> list[str]:
        return [c["method"] for c in self.calls if c["http"] == "POST"]

    def client_env(self, home: Path, user: str = USER) -> dict:
        """Environment for the real client: talk to this server, with a throwaway identity."""
        config = Path(home) / "kaggle-config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "kaggle.json").write_text(json.dumps({"username": user, "key": FAKE_KEY}))
        (config / "kaggle.json").chmod(0o600)
        tmp = Path(home) / "tmp"
        tmp.mkdir(exist_ok=True)
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "KAGGLE_CONFIG_DIR": str(config),
                "http_proxy": self.url, "HTTP_PROXY": self.url, "no_proxy": "", "NO_PROXY": "",
                "HOME": str(home), "TMPDIR": str(tmp), "KAGGLE_USERNAME": user, "KAGGLE_KEY": FAKE_KEY}
