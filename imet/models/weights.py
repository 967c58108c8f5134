"""Pretrained ImageNet weights: an arch's spec by name, where its weights file is (offline first,
downloaded only when the network is up), how it is loaded safely (weights_only) into a body whose
classifier imet replaces, and `imet weights fetch`, which writes the files a kernel attaches.

Kaggle kernels that submit run with the internet off: the official file is attached as a
dataset somewhere under /kaggle/input, so the resolvers search for it by its official name."""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import torch
from torch import nn

from imet.config import close_match
from imet.errors import CheckpointError, UserError
from imet.fileio import atomic_copy, atomic_write_text, file_sha256, read_json_object
from imet.models.registry import ARCHS, TIMM_PREFIX, ArchSpec, TimmSpec, timm_spec
from imet.walk import walk_folders

CONNECT_TIMEOUT_S = 3.0


def get_spec(arch: str) -> ArchSpec:
    if arch.startswith(TIMM_PREFIX):
        return timm_spec(arch)
    try:
        return ARCHS[arch]
    except KeyError:
        near = close_match(arch, ARCHS)
        raise UserError(f"--arch {arch}: unknown architecture; "
                        + (f"did you mean {near}? " if near else "")
                        + f"the names are {', '.join(sorted(ARCHS))}, or any timm model as "
                        f"{TIMM_PREFIX}<name>") from None


def has_pretrained_weights(arch: str) -> bool:
    """Whether `arch` has official ImageNet weights to start from (tiny_cnn has none)."""
    return bool(get_spec(arch).filenames())


def hub_checkpoint_dir() -> Path:
    """Where torch.hub keeps downloads: $TORCH_HOME/hub/checkpoints (read at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_file(names: tuple, roots) -> Path | None:
    """First file whose basename is one of `names` under any root (recursive, links followed,
    each real folder visited once so a symlink loop cannot hang the search)."""
    wanted = set(names)
    for root in roots:
        root = Path(root)
        if root.is_file():
            if root.name in wanted:
                return root
            continue
        for folder, _, files in walk_folders([root]):
            hits = wanted.intersection(files)
            if hits:
                # Preference order of `names` decides between several hits in one folder.
                return folder / next(n for n in names if n in hits)
    return None


def _resolve(host: str, port: int, timeout: float) -> list:
    """getaddrinfo bounded by `timeout`: it ignores socket timeouts, and a sandbox whose DNS
    server drops packets would otherwise stall the check for tens of seconds."""
    found: list = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError:
            pass
    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    return list(found)


def network_up(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """A quick TCP connect to the download host: Kaggle's offline kernels fail it at once."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for family, kind, proto, _, address in _resolve(parts.hostname, port, timeout):
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
                return True
        except OSError:
            continue
    return False


def sha256_prefix(official_url: str) -> str | None:
    """The sha256 prefix that download.pytorch.org file names carry (resnet18-f37072fd.pth);
    other hosts (pretrainedmodels' data.lip6.fr) follow no such convention."""
    if urlsplit(official_url).hostname != "download.pytorch.org":
        return None
    match = torch.hub.HASH_REGEX.search(official_url.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def resolve_weights(arch: str, explicit=None, search_roots=(), allow_download: bool = True,
                    mirror: str | None = None) -> Path:
    """Path of `arch`'s pretrained weights: `explicit` (a file, or a folder to search), then
    torch.hub's checkpoint folder, then a recursive search of `search_roots` for the official
    file name, then a download when the network is up (from `mirror`, a base URL, when given).
    Raises one UserError listing every place searched."""
    spec = get_spec(arch)
    if isinstance(spec, TimmSpec):
        return resolve_timm_weights(spec, explicit, search_roots, allow_download)
    names = spec.filenames()
    if not names:
        raise UserError(f"{arch} has no pretrained weights; train it with --no-pretrained")
    searched = []
    if explicit is not None:
        explicit = Path(explicit)
        if explicit.is_file():
            return explicit
        if explicit.is_dir():
            hit = find_file(names, [explicit])
            if hit:
                return hit
            searched.append(f"{explicit} (recursive)")
        else:
            raise UserError(f"--weights {explicit}: no such file; pass the path of a "
                            f"{names[0]} file or a folder holding it")
    hub, roots = hub_checkpoint_dir(), [Path(r) for r in search_roots]
    hit = find_file(names, [hub, *roots])  # a missing folder holds nothing
    if hit:
        return hit
    searched.append(str(hub))
    searched.extend(f"{r} ({'recursive' if r.exists() else 'does not exist'})" for r in roots)
    url = official = spec.urls()[0]
    if mirror:
        url = mirror.rstrip("/") + "/" + names[0]
    if not allow_download:
        searched.append("download disabled")
    elif network_up(url):
        dest = hub / names[0]
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # torch.hub writes to a temp file and moves it into place only when complete and,
            # with a hash prefix, verified: a cut or corrupted download is never cached.
            torch.hub.download_url_to_file(url, str(dest), hash_prefix=sha256_prefix(official),
                                           progress=False)
            return dest
        except Exception as exc:  # any transport failure: report it with the rest
            searched.append(f"download from {url} failed ({type(exc).__name__}: {exc})")
    else:
        searched.append(f"no network to download {url}")
    raise UserError(
        f"pretrained weights for {arch} not found: looked for {' or '.join(names)} in "
        f"{'; '.join(searched)}. Attach a dataset holding the file (it is found anywhere under "
        f"the input root), pass --weights PATH, or train with --no-pretrained")


def load_problem(exc: Exception) -> str:
    """torch.load's failure in a few words (its own messages run over many lines)."""
    text = " ".join(str(exc).split())
    if "Weights only load failed" in text:
        return "it holds objects other than tensors and plain data, refused for safety"
    return f"{type(exc).__name__}: {text[:160] or 'unreadable'}"


def read_state_dict(path) -> dict:
    """Tensors of a weights file: safetensors, or torch.load with weights_only=True (attached
    files are untrusted: nothing is unpickled)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read weights ({load_problem(exc)}); "
                              f"replace the file with an intact copy")
    # Training checkpoints of other tools nest the weights and prefix DataParallel's 'module.'.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors; pass an official weights file")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_body_weights(body: nn.Module, spec: ArchSpec, path) -> None:
    """Copy the file's tensors into every body parameter/buffer; the classifier's are dropped
    (imet replaces it). Any missing, unexpected or mis-shaped body key is an error."""
    path = Path(path)
    state = read_state_dict(path)
    if spec.fix_keys:
        state = spec.fix_keys(state)
    state = {k: v for k, v in state.items() if not k.startswith(spec.classifier_prefixes)}
    target = {k: v for k, v in body.state_dict().items()
              if not k.startswith(spec.classifier_prefixes)}
    # Files saved before PyTorch 0.4.1 (most official ones) have no BatchNorm
    # `num_batches_tracked`; BatchNorm loads without it.
    missing = sorted(k for k in set(target) - set(state) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(target) & set(state) if target[k].shape != state[k].shape)
    problems = [f"{len(keys)} {what} (e.g. {keys[0]})"
                for keys, what in ((missing, "missing"), (unexpected, "unexpected")) if keys]
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} of another shape (e.g. {k}: file "
                        f"{tuple(state[k].shape)}, {spec.name} {tuple(target[k].shape)})")
    if problems:
        raise CheckpointError(f"{path}: does not fit {spec.name}: {'; '.join(problems)} keys; "
                              f"pass the weights file of {spec.name} ({spec.filenames()[0]})")
    body.load_state_dict(state, strict=False)


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path("~/.cache/huggingface").expanduser()) / "hub"


def _config_names(folder: Path, spec: TimmSpec) -> bool:
    """Whether folder/config.json is timm's config of `spec`'s model (architecture and tag)."""
    config = read_json_object(folder / "config.json") or {}
    tag = (config.get("pretrained_cfg") or {}).get("tag")
    return config.get("architecture") == spec.model.partition(".")[0] and tag in (None, spec.tag)


def _weights_in(folder: Path, files: list, spec: TimmSpec) -> Path | None:
    """`spec`'s weights file among one folder's `files`, or None."""
    names = spec.filenames()  # the flat name, the hub repo's two, the legacy download's
    flat, hub_files, legacy = names[0], names[1:3], names[3:]
    if flat in files:
        return folder / flat
    hub = spec.hub_folder()
    in_hub_cache = hub and folder.parent.name == "snapshots" and folder.parent.parent.name == hub
    if not (in_hub_cache or ("config.json" in files and _config_names(folder, spec))):
        hub_files = ()
    return next((folder / name for name in (*hub_files, *legacy) if name in files), None)


def find_in_roots(spec: TimmSpec, roots) -> Path | None:
    walk = walk_folders([r for r in roots if Path(r).is_dir()])
    return next(filter(None, (_weights_in(folder, files, spec) for folder, _, files in walk)),
                None)


def resolve_timm_weights(spec: TimmSpec, explicit=None, search_roots=(),
                         allow_download: bool = True) -> Path:
    """Path of a timm model's pretrained weights: `explicit` (a file, or a folder to search);
    under `search_roots` and the Hugging Face cache, a hub cache entry, the flat
    `<name>.safetensors` of `imet weights fetch` or a model.safetensors beside a config.json
    naming the model; then $TORCH_HOME/hub/checkpoints (timm's legacy names); only then a
    download through huggingface_hub (allowed, network up, HF_HUB_OFFLINE unset)."""
    names = spec.filenames()
    searched = []
    if explicit is not None:
        explicit = Path(explicit)
        if explicit.is_file():
            return explicit
        if not explicit.is_dir():
            raise UserError(f"--weights {explicit}: no such file; pass the path of {spec.model}'s "
                            f"model.safetensors (or .pth/.bin), or a folder holding it")
        hit = find_in_roots(spec, [explicit])
        if hit:
            return hit
        searched.append(f"{explicit} (recursive)")
    roots = [Path(r) for r in search_roots] + [hf_cache_dir()]
    hit = find_in_roots(spec, roots)
    if hit:
        return hit
    searched.extend(f"{r} ({'recursive' if r.is_dir() else 'does not exist'})" for r in roots)
    hub = hub_checkpoint_dir()
    hit = find_file(names[:1] + names[3:], [hub])
    if hit:
        return hit
    searched.append(str(hub))
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not spec.hf_hub_id:
        searched.append(f"no Hugging Face hub copy of {spec.model}")
    elif not allow_download or offline:
        searched.append("download disabled" if not allow_download else "HF_HUB_OFFLINE is set")
    elif network_up(endpoint):
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(spec.hf_hub_id, "model.safetensors",
                                        cache_dir=str(hf_cache_dir())))
        except Exception as exc:  # any transport or hub failure: report it with the rest
            searched.append(f"download of {spec.hf_hub_id} failed ({type(exc).__name__})")
    else:
        searched.append(f"no network to reach {endpoint}")
    looked = [f"{spec.hub_folder()}/snapshots/*/model.safetensors"] if spec.hf_hub_id else []
    looked += [names[0], "model.safetensors beside a config.json naming it", *names[3:]]
    raise UserError(
        f"pretrained weights for {spec.name} ({spec.model}) not found: looked for "
        f"{' or '.join(looked)} in {'; '.join(searched)}. Attach a dataset holding them (imet "
        f"weights fetch writes one), pass --weights PATH, or train without --pretrained")


# `imet weights fetch` writes one flat folder that `kaggle datasets create -p DIR` uploads as it
# is, its files named as the resolvers above look for them: attaching the dataset is all a
# kernel needs.
MANIFEST = "weights-manifest.json"
METADATA = "dataset-metadata.json"
SLUG = "imet-weights"
STAGING = ".download"  # partial downloads; removed when every file is in place
CHUNK = 1 << 20
TIMEOUT_S = 60


def plan(arch: str, url_base: str | None) -> dict:
    """{"arch", "name" (the file in DIR), "hf" (repo id) or "url"} for one arch."""
    spec = get_spec(arch)
    if isinstance(spec, TimmSpec):
        if spec.hf_hub_id:
            return {"arch": arch, "name": spec.filenames()[0], "hf": spec.hf_hub_id}
        legacy = spec.filenames()[3:]
        if not legacy:
            raise UserError(f"{arch}: timm lists no downloadable weights for {spec.model}")
        url, name = spec.url, legacy[0]
    else:
        urls = spec.urls()
        if not urls:
            raise UserError(f"{arch} has no pretrained weights to fetch; leave it out")
        url, name = urls[0], spec.filenames()[0]
    prefix = sha256_prefix(url)  # from the official URL: a mirror serves the same file
    if url_base:
        url = url_base.rstrip("/") + "/" + name
    return {"arch": arch, "name": name, "url": url, "sha256_prefix": prefix}


def _download_url(url: str, part: Path) -> None:
    """`url` into `part`, continuing from the bytes `part` already holds (HTTP Range)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:  # 416: nothing left to send, the part file is whole
            raise
        return
    with response, open(part, "ab" if have and response.status == 206 else "wb") as handle:
        # read1: what has arrived, written at once, so a stalled host loses nothing.
        for block in iter(lambda: response.read1(CHUNK), b""):
            handle.write(block)
            handle.flush()


def _download_hf(repo_id: str, staging: Path) -> tuple[Path, str]:
    """(path in the staging hub cache, source URL with the resolved commit)."""
    from huggingface_hub import constants, hf_hub_download

    path = Path(hf_hub_download(repo_id, "model.safetensors", cache_dir=str(staging / "hub")))
    commit = path.parent.name  # hub cache: .../snapshots/<commit>/model.safetensors
    return path, f"{constants.ENDPOINT}/{repo_id}/resolve/{commit}/model.safetensors"


def _read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        return {"format": "imet-weights", "version": 1, "files": {}}
    doc = read_json_object(path)
    if doc is None or not isinstance(doc.get("files"), dict):
        raise UserError(f"{path}: not a weights manifest; remove it (and {out}'s files) to "
                        f"fetch again")
    return doc


def _check_download(item: dict, got: Path) -> None:
    """A download is kept only when whole: the sha256 prefix that download.pytorch.org names
    carry, a readable safetensors header."""
    prefix = item.get("sha256_prefix")
    if prefix and not file_sha256(got).startswith(prefix):
        got.unlink()
        raise UserError(f"{item['arch']}: {item['url']} sent a file whose sha256 does not start "
                        f"with {prefix} (its name says it must); check the URL base, run again")
    if got.name.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(str(got), framework="pt") as handle:
                handle.keys()
        except Exception as exc:
            raise UserError(f"{item['arch']}: {got.name} from {item.get('hf')} is not a "
                            f"readable safetensors file ({type(exc).__name__}); run again")


def _intact(out: Path, entry: dict | None) -> bool:
    path = out / entry["name"] if entry else None
    return bool(path and path.is_file() and path.stat().st_size == entry["size"]
                and file_sha256(path) == entry["sha256"])


def fetch_weights(archs, out, owner: str, url_base: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Fetch every arch's official weights into `out`; returns the manifest. timm's come through
    huggingface_hub (HF_ENDPOINT honoured), the others from their official URLs or `url_base` +
    the file name (a mirror). Each finished file is recorded at once in the manifest: a rerun
    skips what is recorded and intact and continues a cut URL download (HTTP Range)."""

    out = Path(out)
    plans = [plan(arch, url_base) for arch in dict.fromkeys(archs)]  # validate every name first
    out.mkdir(parents=True, exist_ok=True)
    staging = out / STAGING
    manifest = _read_manifest(out)
    atomic_write_text(out / METADATA, json.dumps(
        {"title": SLUG, "id": f"{owner}/{SLUG}", "licenses": [{"name": "other"}]}, indent=2) + "\n")
    for item in plans:
        name = item["name"]
        if _intact(out, manifest["files"].get(name)):
            log(f"{item['arch']}: {name} already fetched")
            continue
        staging.mkdir(exist_ok=True)
        try:
            if "hf" in item:
                got, source = _download_hf(item["hf"], staging)
            else:
                got, source = staging / (name + ".part"), item["url"]
                _download_url(source, got)
        except Exception as exc:  # any transport or hub failure: one line, rerun resumes
            where = item.get("hf") or item["url"]
            raise UserError(f"{item['arch']}: download of {where} failed "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); run "
                            f"the same command again to resume")
        _check_download(item, got)
        atomic_copy(got, out / name)
        manifest["files"][name] = {"name": name, "arch": item["arch"], "source": source,
                                   "size": (out / name).stat().st_size,
                                   "sha256": file_sha256(out / name)}
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if "hf" not in item:
            got.unlink()
        log(f"{item['arch']}: {name} ({manifest['files'][name]['size']} bytes) from {source}")
    shutil.rmtree(staging, ignore_errors=True)
    return manifest
