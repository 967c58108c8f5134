"""`imet weights fetch`: the official pretrained weights of some archs, downloaded on an online
machine into one flat folder that `kaggle datasets create -p DIR` uploads as it is.

timm's weights come through huggingface_hub (HF_ENDPOINT honoured), pretrainedmodels' and
torchvision's (and timm's few models without a hub copy) from their official URLs, or from
`url_base` + the file name (a mirror). Every finished file is recorded at once in
weights-manifest.json (sha256, size, source, arch): a rerun after an interruption skips what is
recorded and intact, and continues a cut URL download with an HTTP Range request. The files
carry the names the offline resolver looks for, so attaching the dataset is all a kernel needs."""
from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from imet.errors import UserError
from imet.fileio import atomic_copy, atomic_write_text
from imet.models.timm_arch import TimmSpec
from imet.models.weights import get_spec, sha256_prefix

MANIFEST = "weights-manifest.json"
METADATA = "dataset-metadata.json"
SLUG = "imet-weights"
STAGING = ".download"  # partial downloads; removed when every file is in place
CHUNK = 1 << 20
TIMEOUT_S = 60


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


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
        while True:
            block = response.read1(CHUNK)  # what has arrived: a stalled host loses nothing
            if not block:
                break
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
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise UserError(f"{path}: not a weights manifest; remove it (and {out}'s files) to "
                        f"fetch again")
    return doc


def _check(item: dict, got: Path) -> None:
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
    if not entry:
        return False
    path = out / entry["name"]
    return (path.is_file() and path.stat().st_size == entry["size"]
            and file_sha256(path) == entry["sha256"])


def fetch_weights(archs, out, owner: str, url_base: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Fetch every arch's weights into `out`; returns the manifest."""
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
        _check(item, got)
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
