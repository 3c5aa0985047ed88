"""HMAC signatures of manifests: who may put a model in the artifacts directory.

The manifest records the model file's sha256, so an HMAC over the manifest authenticates the
model file too. The key file holds one key per line (comments with #): the first line signs,
every line verifies, so a key is rotated by adding the new key first, re-signing every model
(`tabserve sign --all`), then removing the old key. The key file must live outside the
artifacts directory: whoever can write models must not be able to read the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, ModelIntegrityError

SIGNATURE_FIELDS = ("signature", "signing_key_id")
MIN_KEY_CHARS = 32


def key_id(key: bytes) -> str:
    """A short public name of a key (a hash prefix), recorded beside each signature."""
    return hashlib.sha256(b"tabserve-key-id:" + key).hexdigest()[:16]


def canonical(data: dict[str, Any]) -> bytes:
    """The manifest's fields, without its signature, as the bytes the HMAC covers."""
    unsigned = {k: v for k, v in data.items() if k not in SIGNATURE_FIELDS}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


@dataclass(frozen=True)
class SigningKeys:
    """The keys of a key file: `keys[0]` signs, any verifies."""

    keys: tuple[bytes, ...]

    @classmethod
    def from_file(cls, path: Path, artifacts_dir: Path) -> SigningKeys:
        """Read a key file; ConfigError when it is unreadable, empty, weak or inside the
        artifacts directory."""
        path = Path(path)
        if path.resolve().is_relative_to(Path(artifacts_dir).resolve()):
            raise ConfigError("TABSERVE_MODEL_SIGNING_KEY_FILE: the key file must be outside "
                              "the artifacts directory")
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"TABSERVE_MODEL_SIGNING_KEY_FILE: cannot read the key file: "
                              f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        keys = tuple(line.strip().encode() for line in lines
                     if line.strip() and not line.strip().startswith("#"))
        if not keys:
            raise ConfigError("TABSERVE_MODEL_SIGNING_KEY_FILE: the key file holds no key")
        if any(len(k) < MIN_KEY_CHARS for k in keys):
            raise ConfigError(f"TABSERVE_MODEL_SIGNING_KEY_FILE: every key needs at least "
                              f"{MIN_KEY_CHARS} characters (e.g. `openssl rand -hex 32`)")
        return cls(keys)

    def sign(self, data: dict[str, Any]) -> dict[str, str]:
        """The signature fields for a manifest's data, made with the first key."""
        mac = hmac.new(self.keys[0], canonical(data), hashlib.sha256).hexdigest()
        return {"signature": mac, "signing_key_id": key_id(self.keys[0])}

    def verify(self, data: dict[str, Any], ref: str) -> None:
        """Raise ModelIntegrityError unless the manifest data carries a valid HMAC by one of
        the keys."""
        signature, kid = data.get("signature"), data.get("signing_key_id")
        if not isinstance(signature, str) or not signature:
            raise ModelIntegrityError(f"model {ref}: unsigned manifest while a signing key is "
                                      "set; sign it with `tabserve sign`")
        key = next((k for k in self.keys if key_id(k) == kid), None)
        if key is None:
            raise ModelIntegrityError(f"model {ref}: signed with a key that is not in the key "
                                      "file; refusing to load")
        expected = hmac.new(key, canonical(data), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise ModelIntegrityError(f"model {ref}: bad manifest signature; refusing to load")
