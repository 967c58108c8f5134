"""Find pretrained weights offline first, download only when the network is up, and load them
safely (weights_only) into a body whose classifier imet replaces.

Kaggle kernels that submit run with the internet off: the official file is attached as a
dataset somewhere under /kaggle/input, so the resolver searches for it by its official name.
"""
from __future__ import annotations

import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from imet.errors import CheckpointError, UserError
from imet.models.registry import ARCHS, ArchSpec
from imet.models.timm_arch import PREFIX as TIMM_PREFIX
from imet.models.timm_arch import TimmSpec, timm_spec
from imet.walk import walk_folders

CONNECT_TIMEOUT_S = 3.0


def get_spec(arch: str) -> ArchSpec:
    if arch.startswith(TIMM_PREFIX):
        return timm_spec(arch)
    try:
        return ARCHS[arch]
    except KeyError:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(sorted(ARCHS))}"
                        f", or any timm model as {TIMM_PREFIX}<name>")


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


def _download(url: str, dest: Path, hash_prefix: str | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub writes to a temp file and moves it into place only when complete and, with a
    # hash prefix, verified: a cut or corrupted download is never cached.
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=hash_prefix, progress=False)


def resolve_weights(arch: str, explicit=None, search_roots=(), allow_download: bool = True,
                    mirror: str | None = None) -> Path:
    """Path of `arch`'s pretrained weights: `explicit` (a file, or a folder to search), then
    torch.hub's checkpoint folder, then a recursive search of `search_roots` for the official
    file name, then a download when the network is up (from `mirror`, a base URL, when given).
    Raises one UserError listing every place searched."""
    spec = get_spec(arch)
    if isinstance(spec, TimmSpec):
        from imet.models.timm_weights import resolve_timm_weights

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
    hub = hub_checkpoint_dir()
    hit = find_file(names, [hub]) if hub.is_dir() else None
    if hit:
        return hit
    searched.append(str(hub))
    roots = [Path(r) for r in search_roots]
    hit = find_file(names, [r for r in roots if r.exists()])
    if hit:
        return hit
    searched.extend(f"{r} ({'recursive' if r.exists() else 'does not exist'})" for r in roots)
    url = official = spec.urls()[0]
    if mirror:
        url = mirror.rstrip("/") + "/" + names[0]
    if not allow_download:
        searched.append("download disabled")
    elif network_up(url):
        dest = hub / names[0]
        try:
            _download(url, dest, sha256_prefix(official))
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
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            problems.append(f"{len(wrong)} of another shape (e.g. {k}: file "
                            f"{tuple(state[k].shape)}, {spec.name} {tuple(target[k].shape)})")
        raise CheckpointError(f"{path}: does not fit {spec.name}: {'; '.join(problems)} keys; "
                              f"pass the weights file of {spec.name} ({spec.filenames()[0]})")
    body.load_state_dict(state, strict=False)
