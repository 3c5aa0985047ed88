"""The artifacts directory: model versions on disk, resolved by NAME or NAME:VERSION."""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import re
import time
from pathlib import Path
from typing import Any, Literal

from shared.errors import ModelNotFoundError, ValidationError
from shared.models.manifest import Manifest, read_manifest, write_manifest

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COMPRESS_ABOVE_BYTES = 1024 * 1024


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split 'NAME' or 'NAME:VERSION' into name and optional version."""
    name, _, version = ref.partition(":")
    if not NAME_RE.match(name):
        raise ValidationError(f"invalid model name {name!r}")
    if not version:
        return name, None
    if not version.isdigit():
        raise ValidationError(f"invalid model version {version!r}: must be a positive integer")
    return name, int(version)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


class ModelStore:
    """Reads the layout artifacts/<name>/<version>/{manifest.json, model.pkl[.gz]}."""

    def __init__(self, root: Path, refresh_seconds: float = 2.0) -> None:
        self.root = Path(root)
        self.refresh_seconds = refresh_seconds
        self._listing: dict[str, list[int]] = {}
        self._listed_at = -1e18

    def list_models(self, fresh: bool = False) -> dict[str, list[int]]:
        """Model names mapped to their versions (ascending); cached for refresh_seconds."""
        now = time.monotonic()
        if fresh or now - self._listed_at > self.refresh_seconds:
            self._listing = self._scan()
            self._listed_at = now
        return self._listing

    def _scan(self) -> dict[str, list[int]]:
        listing: dict[str, list[int]] = {}
        if not self.root.is_dir():
            return listing
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not NAME_RE.match(model_dir.name):
                continue
            versions = sorted(
                int(v.name)
                for v in model_dir.iterdir()
                if v.name.isdigit() and (v / "manifest.json").is_file()
            )
            if versions:
                listing[model_dir.name] = versions
        return listing

    def resolve(self, ref: str | None, default: str | None = None) -> tuple[str, int]:
        """Resolve a model reference (or the default) to a concrete (name, version)."""
        listing = self.list_models()
        ref = ref or default
        if ref is None:
            if len(listing) == 1:
                name = next(iter(listing))
                return name, listing[name][-1]
            if not listing:
                raise ModelNotFoundError(f"no models in {self.root}; run 'tabserve train'")
            raise ModelNotFoundError(
                "several models exist and no default is set: pass ?model=NAME "
                f"(one of {', '.join(sorted(listing))}) or set TABSERVE_DEFAULT_MODEL"
            )
        name, version = parse_ref(ref)
        versions = listing.get(name) or self.list_models(fresh=True).get(name)
        if not versions:
            raise ModelNotFoundError(f"unknown model {name!r}")
        if version is None:
            return name, versions[-1]
        if version not in versions:
            raise ModelNotFoundError(f"model {name!r} has no version {version}")
        return name, version

    def version_dir(self, name: str, version: int) -> Path:
        """Directory of one model version."""
        return self.root / name / str(version)

    def manifest(self, name: str, version: int) -> Manifest:
        """The manifest of one model version."""
        return read_manifest(self.version_dir(name, version))

    def next_version(self, name: str) -> int:
        """The version number a new artifact of this model gets."""
        versions = self.list_models(fresh=True).get(name, [])
        return (versions[-1] + 1) if versions else 1

    def save(self, model: Any, manifest_fields: dict[str, Any]) -> Manifest:
        """Pickle a model and write its manifest as the next version of its name."""
        name = manifest_fields["name"]
        parse_ref(name)
        self.root.mkdir(parents=True, exist_ok=True)
        version = self.next_version(name)
        directory = self.version_dir(name, version)
        directory.mkdir(parents=True, exist_ok=False)
        payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        compression: Literal["gzip"] | None = None
        filename = "model.pkl"
        if len(payload) > COMPRESS_ABOVE_BYTES:
            payload = gzip.compress(payload, compresslevel=6, mtime=0)
            compression, filename = "gzip", "model.pkl.gz"
        (directory / filename).write_bytes(payload)
        manifest = Manifest(
            **manifest_fields,
            version=version,
            model_file=filename,
            compression=compression,
            sha256=sha256_bytes(payload),
            size_bytes=len(payload),
        )
        write_manifest(directory, manifest)
        self.list_models(fresh=True)
        logger.info("model %s: saved version %d (%d bytes)", name, version, len(payload))
        return manifest
