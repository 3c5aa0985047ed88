"""The artifacts directory: model versions on disk, resolved by NAME, NAME:VERSION or
NAME@ALIAS (shared/models/aliases.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError as PydanticValidationError

from shared.errors import (
    ConflictError,
    ModelIntegrityError,
    ModelLoadError,
    ModelNotFoundError,
    ValidationError,
)
from shared.models.aliases import LIVE, AliasBook, check_alias
from shared.models.manifest import (
    MANIFEST_FILE,
    Manifest,
    read_manifest_data,
    write_manifest,
)
from shared.models.refs import NAME_RE, VERSION_RE, Target, check_name, parse_ref
from shared.models.signing import SigningKeys

if TYPE_CHECKING:
    from shared.config import Settings

logger = logging.getLogger(__name__)

COMPRESS_ABOVE_BYTES = 1024 * 1024
# The default model's name, beside the model directories; no model name can start with "_".
DEFAULT_FILE = "_default.json"


def describe_error(exc: BaseException) -> str:
    """An error's reason without the file path an OSError carries (answers must not show
    the server's directories)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, PydanticValidationError):  # the field and the reason, not a summary
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


class ModelStore:
    """Reads the layout artifacts/<name>/<version>/{manifest.json, model.pkl[.gz]}."""

    def __init__(self, root: Path, refresh_seconds: float = 2.0,
                 keys: SigningKeys | None = None, allow_version_mismatch: bool = False) -> None:
        self.root = Path(root)
        self.refresh_seconds = refresh_seconds
        # With keys, every model's manifest must carry a valid HMAC before it is loaded, and
        # saved models are signed.
        self.keys = keys
        self.allow_version_mismatch = allow_version_mismatch
        self._listing: dict[str, list[int]] = {}
        self._listed_at = -1e18
        self._default: str | None = None
        self._default_read_at = -1e18
        self.alias_book = AliasBook(self.root, refresh_seconds)
        # Whether a new version written by save() is live at once (TABSERVE_AUTO_PROMOTE);
        # a model's first version always is.
        self.auto_promote = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore:
        """The store of settings.artifacts_dir with its signing keys and version policy."""
        keys = None
        if settings.model_signing_key_file is not None:
            keys = SigningKeys.from_file(settings.model_signing_key_file, settings.artifacts_dir)
        else:
            logger.info("no model signing key (TABSERVE_MODEL_SIGNING_KEY_FILE): models "
                           "are checked by checksum and unpickling allow-list only")
        store = cls(settings.artifacts_dir, keys=keys,
                    allow_version_mismatch=settings.allow_version_mismatch)
        store.auto_promote = settings.auto_promote
        return store

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
            if not model_dir.is_dir() or not NAME_RE.fullmatch(model_dir.name):
                continue
            versions = sorted(
                int(v.name)
                for v in model_dir.iterdir()
                if VERSION_RE.fullmatch(v.name) and (v / "manifest.json").is_file()
            )
            if versions:
                listing[model_dir.name] = versions
        return listing

    def resolve(self, ref: str | None, default: str | None = None) -> tuple[str, int]:
        """Resolve a model reference (or, without one, the default model) to a concrete
        (name, version); `default` is the configured default (TABSERVE_DEFAULT_MODEL)."""
        name, version, _ = self.resolve_target(ref, default)
        return name, version

    def resolve_target(self, ref: str | None, default: str | None = None) -> Target:
        """Like resolve, also saying through which alias the version was reached: a bare
        NAME follows the model's `live` alias (its latest version while it has none)."""
        ref = ref or default or self.default_name()
        if ref is None:
            listing = self.list_models()
            if not listing:
                raise ModelNotFoundError("no models in the artifacts directory; run "
                                         "'tabserve train'")
            raise ModelNotFoundError(
                "several models exist and none is recorded as the default: pass ?model=NAME "
                f"(one of {', '.join(sorted(listing))}) or set TABSERVE_DEFAULT_MODEL"
            )
        name, version, alias = parse_ref(ref)
        versions = self.versions(name)
        if version is not None:
            if version not in versions:
                raise ModelNotFoundError(f"model {name!r} has no version {version}")
            return Target(name, version, None)
        aliases = self.aliases(name)
        alias = alias or LIVE
        if alias == LIVE and LIVE not in aliases:
            return Target(name, versions[-1], LIVE)  # no promote yet: the latest is live
        if alias not in aliases:
            raise ModelNotFoundError(f"model {name!r} has no alias {alias!r} (aliases: "
                                     f"{', '.join(sorted(aliases)) or 'none'})")
        if aliases[alias] not in versions and aliases[alias] not in self.versions(name, True):
            raise ModelLoadError(f"model {name}@{alias} names version {aliases[alias]}, which "
                                 "is not in the artifacts directory")
        return Target(name, aliases[alias], alias)

    def versions(self, name: str, fresh: bool = False) -> list[int]:
        """The model's versions (ascending); 404 for a model that has none."""
        versions = self.list_models(fresh).get(name) or self.list_models(fresh=True).get(name)
        if not versions:
            raise ModelNotFoundError(f"unknown model {name!r}")
        return versions

    def aliases(self, name: str, fresh: bool = False) -> dict[str, int]:
        """The model's aliases (alias -> version), re-read at most every refresh_seconds."""
        return self.alias_book.get(name, fresh)

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        """The model's alias changes, oldest first."""
        return self.alias_book.history(name)

    def live_version(self, name: str) -> int:
        """The version an unpinned request for the model gets."""
        return self.resolve_target(name).version

    def set_alias(self, name: str, alias: str, version: int | None,
                  actor: str | None = None) -> int | None:
        """Point a model's alias at one of its versions (None removes it; `live` cannot be
        removed, only moved); the version it named before."""
        check_name(name)
        check_alias(alias)
        versions = self.versions(name, fresh=True)
        if version is None and alias == LIVE:
            raise ConflictError(f"the {LIVE!r} alias cannot be removed: promote a version")
        if version is not None and version not in versions:
            raise ModelNotFoundError(f"model {name!r} has no version {version} (versions: "
                                     f"{', '.join(map(str, versions))})")
        previous = self.alias_book.write(name, alias, version, actor)
        if previous is None and alias == LIVE:
            previous = versions[-1]  # no `live` alias yet: the latest version was live
        logger.info("model %s: alias %s -> %s (was %s)", name, alias, version, previous)
        return previous

    def promote(self, name: str, version: int, actor: str | None = None) -> int | None:
        """Make `version` the one unpinned requests get (a rollback promotes an older one);
        the version that was live before."""
        return self.set_alias(name, LIVE, version, actor)

    def default_name(self) -> str | None:
        """The name requests without ?model= get when TABSERVE_DEFAULT_MODEL is not set:
        the one recorded in the artifacts directory, else the only model (recorded now, so
        that adding a second model never changes it); None while there is no such name."""
        recorded = self._recorded_default()
        if recorded is not None:
            return recorded
        listing = self.list_models()
        if len(listing) != 1:
            return None
        only = next(iter(listing))
        return self.record_default(only)

    def _recorded_default(self) -> str | None:
        # Read at most once per refresh_seconds: requests without ?model= come here.
        now = time.monotonic()
        if self._default is None or now - self._default_read_at > self.refresh_seconds:
            self._default = self._read_default()
            self._default_read_at = now
        return self._default

    def _read_default(self) -> str | None:
        try:
            name = json.loads((self.root / DEFAULT_FILE).read_text())["name"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s unreadable (%s): no recorded default model", DEFAULT_FILE,
                           describe_error(exc))
            return None
        return name if isinstance(name, str) and NAME_RE.fullmatch(name) else None

    def record_default(self, name: str) -> str:
        """Record `name` as the default model unless one is recorded already; the recorded
        name. The first writer wins, across processes (a hard link never replaces a file)."""
        tmp = self.root / f".{DEFAULT_FILE}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps({"name": name}) + "\n")
            os.link(tmp, self.root / DEFAULT_FILE)
        except FileExistsError:
            return self._read_default() or name
        except OSError as exc:  # a read-only artifacts directory: serve it, unrecorded
            if self._default != name:
                logger.warning("default model %s not recorded: %s", name, describe_error(exc))
            self._default = name
            return name
        finally:
            tmp.unlink(missing_ok=True)
        logger.info("default model: %s, recorded in %s", name, DEFAULT_FILE)
        self._default = name
        return name

    def version_dir(self, name: str, version: int) -> Path:
        """Directory of one model version; ModelIntegrityError when the name is not a model
        name or a symbolic link leads out of the artifacts directory."""
        check_name(name)
        directory = self.root / name / str(int(version))
        self.check_inside(directory, f"{name}:{version}")
        return directory

    def check_inside(self, path: Path, ref: str) -> None:
        """Refuse a path that resolves (through links) outside the artifacts directory."""
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ModelIntegrityError(f"model {ref}: a link leads out of the artifacts "
                                      "directory; refusing to read it")

    def manifest(self, name: str, version: int) -> Manifest:
        """The manifest of one model version; 503 (ModelLoadError) when it cannot be read."""
        return self._manifest(name, version)[0]

    def trusted_manifest(self, name: str, version: int) -> Manifest:
        """The manifest, its HMAC verified when signing keys are set (ModelIntegrityError)."""
        manifest, data = self._manifest(name, version)
        if self.keys is not None:
            self.keys.verify(data, f"{name}:{version}")
        return manifest

    def _manifest(self, name: str, version: int) -> tuple[Manifest, dict[str, Any]]:
        directory = self.version_dir(name, version)
        try:
            self.check_inside(directory / MANIFEST_FILE, f"{name}:{version}")
            data = read_manifest_data(directory)
            manifest = Manifest.model_validate(data)
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or a field out of shape
            raise ModelLoadError(f"model {name}:{version}: unreadable manifest: "
                                 f"{describe_error(exc)}") from None
        if (manifest.name, manifest.version) != (name, version):
            raise ModelIntegrityError(f"model {name}:{version}: its manifest describes "
                                      f"{manifest.ref}; refusing to load")
        return manifest, data

    def sign(self, name: str, version: int) -> Manifest:
        """Sign one version's manifest with the first key, after checking the model file
        still has the manifest's checksum."""
        if self.keys is None:
            raise ValidationError("no signing key: set TABSERVE_MODEL_SIGNING_KEY_FILE")
        manifest = self.manifest(name, version)
        path = self.version_dir(name, version) / manifest.model_file
        self.check_inside(path, manifest.ref)
        if sha256_bytes(path.read_bytes()) != manifest.sha256:
            raise ModelIntegrityError(f"model {manifest.ref}: the model file does not match "
                                      "its manifest's checksum; not signing it")
        signed = self._signed(manifest)
        write_manifest(self.version_dir(name, version), signed)
        return signed

    def _signed(self, manifest: Manifest) -> Manifest:
        if self.keys is None:
            return manifest
        data = manifest.model_dump(mode="json")
        return Manifest.model_validate({**data, **self.keys.sign(data)})

    def catalog(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every model with its versions and latest manifest; apart, the models whose latest
        manifest cannot be read (one bad directory does not hide the others)."""
        models, unreadable = [], []
        for name, versions in self.list_models(fresh=True).items():
            try:
                latest = self.manifest(name, versions[-1]).public()
            except ModelLoadError as exc:
                unreadable.append({"name": name, "version": versions[-1], "error": exc.message})
                continue
            models.append({"name": name, "versions": versions, "latest": latest,
                           **self.lifecycle(name)})
        return models, unreadable

    def lifecycle(self, name: str) -> dict[str, Any]:
        """The model's aliases and live version, for listings (`live` is null when its
        alias names a version that is gone)."""
        try:
            aliases = dict(self.aliases(name, fresh=True))
            live: int | None = self.live_version(name)
        except ModelLoadError as exc:
            return {"aliases": {}, "live": None, "aliases_error": exc.message}
        return {"aliases": aliases, "live": live}

    def next_version(self, name: str) -> int:
        """The version number a new artifact of this model gets."""
        versions = self.list_models(fresh=True).get(name, [])
        return (versions[-1] + 1) if versions else 1

    def save(self, model: Any, manifest_fields: dict[str, Any],
             promote: bool | None = None) -> Manifest:
        """Pickle a model and write its manifest as the next version of its name. The new
        version is live (served to unpinned requests) when it is the model's first, or when
        `promote` (default: the store's auto_promote) says so; otherwise the live version
        stays what it was until `promote`."""
        name = manifest_fields["name"]
        check_name(name)
        promote = self.auto_promote if promote is None else promote
        self.root.mkdir(parents=True, exist_ok=True)
        # The model that was the default stays so; the first model becomes it.
        self.default_name()
        before = self.list_models(fresh=True).get(name, [])
        if before and not promote and LIVE not in self.aliases(name, fresh=True):
            # A model saved before aliases existed: its latest version was live; keep it so.
            self.set_alias(name, LIVE, before[-1], "save")
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
        manifest = self._signed(manifest)
        write_manifest(directory, manifest)
        self.list_models(fresh=True)
        if promote or not before:
            self.promote(name, version, "save")
        self.default_name()
        logger.info("model %s: saved version %d (%d bytes)", name, version, len(payload))
        return manifest
