"""Where a timm model's pretrained weights are found, offline first.

Order: `--weights` (a file, or a folder to search); then, under the input roots and the local
Hugging Face cache, a hub cache entry (models--timm--<name>/snapshots/<rev>/model.safetensors),
the flat `<name>.safetensors` that `imet weights fetch` writes, or any folder whose config.json
names the model beside its model.safetensors; then $TORCH_HOME/hub/checkpoints (timm's legacy
download names). Only when all of them miss, and downloads are allowed, the network is up and
HF_HUB_OFFLINE is not set, is the file downloaded through huggingface_hub."""
from __future__ import annotations

import json
import os
from pathlib import Path

from imet.errors import UserError
from imet.models.timm_arch import TimmSpec
from imet.models.weights import find_file, hub_checkpoint_dir, network_up
from imet.walk import walk_folders

HF_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "huggingface")
    return Path(home) / "hub"


def _config_names(folder: Path, spec: TimmSpec) -> bool:
    """Whether folder/config.json is timm's config of `spec`'s model (architecture and tag)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    tag = (config.get("pretrained_cfg") or {}).get("tag")
    return config.get("architecture") == spec.model.partition(".")[0] and tag in (None, spec.tag)


def _hit(folder: Path, files: list, spec: TimmSpec) -> Path | None:
    names = spec.filenames()
    flat, legacy = names[0], names[3:]
    if flat in files:
        return folder / flat
    hub = spec.hub_folder()
    in_hub_cache = hub and folder.parent.name == "snapshots" and folder.parent.parent.name == hub
    if in_hub_cache or ("config.json" in files and _config_names(folder, spec)):
        for name in HF_FILES:
            if name in files:
                return folder / name
    for name in legacy:
        if name in files:
            return folder / name
    return None


def find_in_roots(spec: TimmSpec, roots) -> Path | None:
    for folder, _, files in walk_folders([r for r in roots if Path(r).is_dir()]):
        hit = _hit(folder, files, spec)
        if hit:
            return hit
    return None


def _download(spec: TimmSpec) -> Path:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(spec.hf_hub_id, HF_FILES[0], cache_dir=str(hf_cache_dir()))
    return Path(path)


def resolve_timm_weights(spec: TimmSpec, explicit=None, search_roots=(),
                         allow_download: bool = True) -> Path:
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
    hit = find_file(names[:1] + names[3:], [hub]) if hub.is_dir() else None
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
            return _download(spec)
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
