"""Model artifacts: manifest contents, integrity checks before unpickling, version warnings."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest

from shared.errors import ModelIntegrityError, ModelNotFoundError, ValidationError
from shared.models.loading import ModelCache, load_model
from shared.models.store import ModelStore, parse_ref
from shared.models.training import train_demo


@pytest.fixture
def store(tmp_path):
    store = ModelStore(tmp_path / "artifacts", refresh_seconds=0)
    train_demo(store)
    return store


class _Exploit:
    """A pickle that writes a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_manifest_has_everything_the_design_lists(store):
    manifest = json.loads((store.version_dir("breast-cancer", 1) / "manifest.json").read_text())
    for key in ("name", "version", "created_at", "task", "features", "target", "classes",
                "sha256", "library_versions", "metrics", "reference"):
        assert key in manifest, key
    assert manifest["task"] == "classification"
    assert manifest["classes"] == [0, 1]
    feature = manifest["features"][0]
    assert feature["name"] == "mean radius" and feature["type"] == "number"
    assert feature["min"] < feature["max"] and feature["nullable"] is False
    assert set(manifest["library_versions"]) >= {"python", "scikit-learn", "xgboost", "pandas"}
    ref = manifest["reference"]["features"]["mean radius"]
    assert len(ref["edges"]) + 1 == len(ref["frequencies"])
    assert sum(ref["frequencies"]) == pytest.approx(1.0)
    assert manifest["metrics"]["accuracy"] > 0.9


def test_versions_increase_and_a_new_version_waits_for_promote(store):
    train_demo(store)
    assert store.list_models(fresh=True) == {"breast-cancer": [1, 2]}
    assert store.resolve(None) == ("breast-cancer", 1)  # the first version stays live
    assert store.resolve("breast-cancer:2") == ("breast-cancer", 2)
    store.promote("breast-cancer", 2)
    assert store.resolve(None) == ("breast-cancer", 2)


def test_tampered_model_is_refused_before_unpickling(store, tmp_path):
    marker = tmp_path / "unpickled"
    manifest = store.manifest("breast-cancer", 1)
    path = store.version_dir("breast-cancer", 1) / manifest.model_file
    path.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(ModelIntegrityError, match="checksum mismatch.*refusing to unpickle"):
        load_model(store, "breast-cancer", 1)
    assert not marker.exists()


def test_one_flipped_byte_is_refused(store):
    manifest = store.manifest("breast-cancer", 1)
    path = store.version_dir("breast-cancer", 1) / manifest.model_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError) as exc:
        load_model(store, "breast-cancer", 1)
    assert exc.value.status == 503 and "breast-cancer:1" in exc.value.message


def test_library_version_mismatch_is_a_warning_when_allowed(store, caplog):
    store.allow_version_mismatch = True  # refused otherwise: tests/test_model_trust.py
    directory = store.version_dir("breast-cancer", 1)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["library_versions"]["scikit-learn"] = "0.0.1"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        loaded = load_model(store, "breast-cancer", 1)
    assert loaded.model is not None
    [warning] = [r for r in caplog.records if r.name == "shared.models.loading"
                 and r.levelno == logging.WARNING]
    ref, mismatch = warning.args
    assert ref == "breast-cancer:1" and mismatch.startswith("scikit-learn 0.0.1 at training, ")


def test_model_cache_loads_once_per_process(store):
    cache = ModelCache(store)
    first = cache.resolve("breast-cancer")
    os.remove(store.version_dir("breast-cancer", 1) / first.manifest.model_file)
    assert cache.resolve("breast-cancer:1") is first


@pytest.mark.parametrize("ref,expected", [
    ("m", ("m", None, None)), ("m:3", ("m", 3, None)),
    ("my-model.v2:10", ("my-model.v2", 10, None)), ("m@champion", ("m", None, "champion")),
])
def test_parse_ref(ref, expected):
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "../etc", "m:x", "m:-1", "a/b", "m@", "m@Live", "m@1",
                                 "m@a:1", "@live"])
def test_parse_ref_rejects_bad_references(ref):
    with pytest.raises(ValidationError):
        parse_ref(ref)


def test_unknown_model(store):
    with pytest.raises(ModelNotFoundError):
        store.resolve("other")
