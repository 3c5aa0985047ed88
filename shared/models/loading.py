"""Loading a model version: integrity check before unpickling, once per process."""

from __future__ import annotations

import gzip
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shared.cooperative import off_loop
from shared.errors import (
    ModelIntegrityError,
    ModelLoadError,
    ModelRejectedInputError,
    TabserveError,
)
from shared.models.fastpredict import FastPath, compile_fast_path
from shared.models.manifest import Manifest
from shared.models.store import ModelStore, describe_error, sha256_bytes
from shared.models.unpickler import restricted_loads
from shared.models.validation import RowValidator
from shared.models.versions import version_mismatches
from shared.monitoring.metrics import (
    record_model_loaded,
    record_model_switch,
    record_model_switch_failed,
)

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Model output for n rows: labels (or values) and class probabilities."""

    labels: np.ndarray
    probabilities: np.ndarray | None


MODEL_INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError)


@dataclass
class LoadedModel:
    """An unpickled model with its manifest and the compiled row validator."""

    manifest: Manifest
    model: Any
    load_seconds: float
    validator: RowValidator = field(init=False)
    classes: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        as_frame = self.manifest.input_kind == "dataframe"
        self.validator = RowValidator(self.manifest.schema_, as_frame=as_frame)
        raw = getattr(self.model, "classes_", None)
        self.classes = np.asarray(raw) if raw is not None else None
        # The classes as the JSON keys of a response's probabilities.
        self.class_keys = [str(c) for c in self.classes] if self.classes is not None else None
        self.has_proba = self.manifest.task == "classification" and hasattr(
            self.model, "predict_proba"
        )
        self.fast: FastPath | None = None
        if not as_frame and self.manifest.schema_.all_numeric:
            fast = compile_fast_path(self.model, probe_rows(self.manifest))
            if fast is not None and fast.proba == self.has_proba:
                self.fast = fast
                logger.info("model %s: fast path %s", self.manifest.ref, fast.kind)

    def predict(self, X: np.ndarray | pd.DataFrame) -> Prediction:
        """Labels and probabilities, identical to the model's own predict/predict_proba.
        The model raising on its input (ValueError, TypeError, KeyError, IndexError: what
        scikit-learn and XGBoost raise for values they refuse) is ModelRejectedInputError."""
        try:
            return self._predict(X)
        except MODEL_INPUT_ERRORS as exc:
            reason = f"{type(exc).__name__}: {describe_error(exc)[:300]}"
            raise ModelRejectedInputError(
                f"model {self.manifest.ref} could not score the input: {reason}",
                reason=reason) from exc

    def refused_rows(self, X: np.ndarray | pd.DataFrame,
                     limit: int = 100) -> list[tuple[int, str]]:
        """The first rows of X, up to `limit` (their positions, with the model's reason), on
        which the model raises, found by halving: a half it scores is fine, a half it
        refuses is halved again, so a few bad rows among many cost a few dozen calls, not
        one per row."""
        refused: list[tuple[int, str]] = []

        def search(index: np.ndarray) -> None:
            if len(refused) >= limit:
                return
            try:
                self.predict(X[index] if isinstance(X, np.ndarray) else X.iloc[index])
            except ModelRejectedInputError as exc:
                if len(index) == 1:
                    refused.append((int(index[0]), exc.reason))
                    return
                search(index[: len(index) // 2])
                search(index[len(index) // 2:])

        search(np.arange(len(X)))
        return refused

    def _predict(self, X: np.ndarray | pd.DataFrame) -> Prediction:
        out = self.fast(X) if self.fast is not None and isinstance(X, np.ndarray) else None
        if not self.has_proba:
            return Prediction(out if out is not None else np.asarray(self.model.predict(X)),
                              None)
        proba = out if out is not None else np.asarray(self.model.predict_proba(X))
        if self.manifest.label_from_proba and self.classes is not None:
            labels = self.classes[proba.argmax(axis=1)]
        else:
            labels = np.asarray(self.model.predict(X))
        return Prediction(labels, proba)


def probe_rows(manifest: Manifest, count: int = 64) -> np.ndarray:
    """Rows spread over each feature's training range (fixed seed): what a fast path must
    score exactly as the model does before it is used."""
    rng = np.random.default_rng(0)
    columns = []
    for f in manifest.features:
        lo = f.min if f.min is not None else -1.0
        hi = f.max if f.max is not None else 1.0
        values = rng.uniform(lo, hi, count)
        values[:3] = (lo, hi, (lo + hi) / 2)
        if f.type == "boolean":
            values = rng.integers(0, 2, count).astype(np.float64)
        elif f.type == "integer":
            values = np.round(values)
        columns.append(values)
    return np.ascontiguousarray(np.column_stack(columns), dtype=np.float64)


def read_verified(store: ModelStore, manifest: Manifest) -> bytes:
    """The model file's bytes, after checking their sha256 against the manifest."""
    path = store.version_dir(manifest.name, manifest.version) / manifest.model_file
    store.check_inside(path, manifest.ref)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"model {manifest.ref}: cannot read {path.name}: "
                             f"{describe_error(exc)}") from None
    digest = sha256_bytes(payload)
    if digest != manifest.sha256:
        raise ModelIntegrityError(
            f"model {manifest.ref}: checksum mismatch for {path.name} (manifest "
            f"{manifest.sha256[:12]}..., file {digest[:12]}...); refusing to unpickle"
        )
    if manifest.compression == "gzip":
        payload = gzip.decompress(payload)
    return payload


def load_model(store: ModelStore, name: str, version: int, threads: int = 1) -> LoadedModel:
    """Verify (signature, then checksum, then library versions), unpickle with the
    allow-list and prepare one model version."""
    started = time.perf_counter()
    manifest = store.trusted_manifest(name, version)  # ModelLoadError when unreadable
    # The checksum and the unpickling, a large model's long CPU steps, run off a gevent
    # worker's loop (shared.cooperative): pure steps, which log nothing, as a native thread
    # must not take the loop's locks (a log handler's), where a greenlet may wait for it.
    payload = off_loop(read_verified, store, manifest)
    check_versions(manifest, store.allow_version_mismatch)
    try:
        model = off_loop(restricted_loads, payload)
    except ModelIntegrityError as exc:
        raise ModelIntegrityError(f"model {manifest.ref}: {exc.message}") from None
    except Exception as exc:  # a corrupt pickle can raise anything
        raise ModelLoadError(f"model {manifest.ref}: cannot unpickle: "
                             f"{describe_error(exc)}") from None
    limit_threads(model, threads)
    seconds = time.perf_counter() - started
    logger.info("model %s: loaded in %.3f s", manifest.ref, seconds)
    return LoadedModel(manifest, model, seconds)


def check_versions(manifest: Manifest, allow_mismatch: bool) -> None:
    """Refuse a model pickled by another scikit-learn or XGBoost than the installed one
    (its classes may unpickle into wrong predictions), unless mismatches are allowed."""
    mismatches = version_mismatches(manifest.library_versions)
    if mismatches and not allow_mismatch:
        raise ModelLoadError(f"model {manifest.ref}: {'; '.join(mismatches)}; refusing to "
                             "load it (retrain it, or set TABSERVE_ALLOW_VERSION_MISMATCH=true)")
    for mismatch in mismatches:
        logger.warning("model %s: %s", manifest.ref, mismatch)


def limit_threads(model: Any, threads: int) -> None:
    """Pin native thread pools (XGBoost, n_jobs) of a model and its pipeline steps."""
    for est in _estimators(model):
        params = est.get_params(deep=False) if hasattr(est, "get_params") else {}
        if "n_jobs" in params:
            est.set_params(n_jobs=threads)
        booster = getattr(est, "get_booster", None)
        if booster is not None:
            try:
                booster().set_param({"nthread": threads})
            except Exception:  # an unfitted booster has nothing to pin
                logger.debug("could not pin threads of %r", est)


def _estimators(model: Any) -> list[Any]:
    found = [model]
    for _, step in getattr(model, "steps", []) or []:
        found.extend(_estimators(step))
    for _, transformer, _ in getattr(model, "transformers_", []) or []:
        if not isinstance(transformer, str):
            found.extend(_estimators(transformer))
    return found


class ModelCache:
    """Per-process cache of loaded models, keyed by (name, version).

    An unpinned reference (NAME, or NAME@ALIAS) follows its alias: when the alias moves to
    another version, the new version is loaded in a background thread while the old one keeps
    answering, and requests switch to it once it is loaded. A version that fails to load is
    logged and counted, the old one stays, and the load is tried again after retry_seconds.
    """

    def __init__(self, store: ModelStore, threads: int = 1, retry_seconds: float = 30.0) -> None:
        self.store = store
        self.threads = threads
        self.retry_seconds = retry_seconds
        self._models: dict[tuple[str, int], LoadedModel] = {}
        self._lock = threading.Lock()  # held while loading
        self._state = threading.Lock()  # held a moment, for _serving and _pending
        # (name, alias) -> the version this process serves for it
        self._serving: dict[tuple[str, str], int] = {}
        # (name, version) -> when a background load may be tried (again); in flight: +inf
        self._pending: dict[tuple[str, int], float] = {}

    def get(self, name: str, version: int) -> LoadedModel:
        """The loaded model, loading it on first use."""
        key = (name, version)
        loaded = self._models.get(key)
        if loaded is None:
            with self._lock:
                loaded = self._models.get(key)
                if loaded is None:
                    loaded = load_model(self.store, name, version, self.threads)
                    record_model_loaded(loaded.manifest, loaded.load_seconds)
                    self._models[key] = loaded
        return loaded

    def resolve(self, ref: str | None, default: str | None = None) -> LoadedModel:
        """Resolve a reference and return its loaded model."""
        name, version, alias = self.store.resolve_target(ref, default)
        if alias is None:
            return self.get(name, version)
        return self._follow(name, alias, version)

    def serving(self) -> dict[tuple[str, str], int]:
        """(name, alias) -> the version this process answers for it now."""
        return dict(self._serving)

    def _follow(self, name: str, alias: str, version: int) -> LoadedModel:
        serving = self._serving.get((name, alias))
        loaded = self._models.get((name, version))
        if serving == version and loaded is not None:
            return loaded
        if loaded is None and serving is not None and (name, serving) in self._models:
            self._load_later(name, version)
            return self._models[(name, serving)]
        loaded = loaded or self.get(name, version)  # nothing served yet: load it now
        self._switch(name, alias, serving, version)
        return loaded

    def _switch(self, name: str, alias: str, old: int | None, new: int) -> None:
        with self._state:
            if self._serving.get((name, alias)) == new:
                return
            self._serving[(name, alias)] = new
        record_model_switch(name, alias, old, new)
        if old is not None:
            logger.info("model %s@%s: now serving version %d (was %d)", name, alias, new, old)

    def _load_later(self, name: str, version: int) -> None:
        key = (name, version)
        if self._pending.get(key, 0.0) > time.monotonic():
            return  # loading now, or failed a moment ago
        with self._state:
            if self._pending.get(key, 0.0) > time.monotonic():
                return
            self._pending[key] = float("inf")
        logger.info("model %s:%d: loading it in the background, for an alias moved to it",
                    name, version)
        threading.Thread(target=self._load_in_background, args=key, daemon=True,
                         name=f"load-{name}-{version}").start()

    def _load_in_background(self, name: str, version: int) -> None:
        try:
            self.get(name, version)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old version served
            message = exc.message if isinstance(exc, TabserveError) else describe_error(exc)
            logger.error("model %s:%d: cannot load it (%s); still serving the version "
                         "before it, retrying in %.0f s", name, version, message,
                         self.retry_seconds)
            record_model_switch_failed(name, version)
            with self._state:
                self._pending[(name, version)] = time.monotonic() + self.retry_seconds
            return
        with self._state:
            self._pending.pop((name, version), None)

    def warm(self, default: str | None) -> LoadedModel | None:
        """Load the default model now, so the first request or job does not wait for it."""
        try:
            return self.resolve(None, default)
        except TabserveError as exc:
            logger.warning("default model not loaded at start: %s", exc.message)
            return None
