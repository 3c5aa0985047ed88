"""Trusted models: signed manifests, the unpickling allow-list, names and links that stay inside
the artifacts directory, library versions, and the formats imported without pickle."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.ensemble import ExtraTreesClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from shared.config import Settings
from shared.errors import ConfigError, ModelIntegrityError, ModelLoadError, ValidationError
from shared.models.importing import import_model
from shared.models.loading import load_model
from shared.models.signing import SigningKeys, key_id
from shared.models.store import ModelStore, parse_ref, sha256_bytes
from shared.models.training import train_demo, train_from_file
from shared.models.unpickler import restricted_loads
from tests.artifacts import copy_demo
from tests.servers import ROOT, ApiServer, tabserve_env, wait_until

KEY = "a" * 64
OTHER_KEY = "b" * 64


class Exploit:
    """A pickle that creates a marker file when unpickled, through one of several callables."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "open":
            return (open, (self.marker, "w"))
        if self.how == "os.system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "subprocess":
            return (subprocess.call, (["touch", self.marker],))
        if self.how == "exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        # A library class that opens (here: creates) a file.
        return (np.memmap, (self.marker, np.uint8, "w+", 0, (4,)))


EXPLOITS = ["open", "os.system", "subprocess", "exec", "memmap"]


def key_file(path: Path, *keys: str) -> Path:
    path.write_text("# tabserve model signing keys, newest first\n" + "\n".join(keys) + "\n")
    return path


def keys(tmp_path: Path, *secrets: str) -> SigningKeys:
    return SigningKeys.from_file(key_file(tmp_path / "keys.txt", *secrets), tmp_path / "artifacts")


def plant(store: ModelStore, name: str, version: int, payload: bytes) -> None:
    """Replace a model file as an attacker with write access would: checksum updated too."""
    directory = store.version_dir(name, version)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / manifest["model_file"]).write_bytes(payload)
    manifest.update(sha256=sha256_bytes(payload), size_bytes=len(payload), compression=None)
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def trained(artifacts_dir, tmp_path_factory) -> Path:
    """An artifacts directory with a copy of the session's demo model, for this module."""
    return copy_demo(artifacts_dir, tmp_path_factory.mktemp("trusted") / "artifacts")


@pytest.fixture
def store(trained, tmp_path) -> ModelStore:
    shutil.copytree(trained, tmp_path / "artifacts")
    return ModelStore(tmp_path / "artifacts", refresh_seconds=0)


@pytest.fixture
def signed(store, tmp_path) -> ModelStore:
    signed = ModelStore(store.root, refresh_seconds=0, keys=keys(tmp_path, KEY))
    signed.sign("breast-cancer", 1)
    return signed


@pytest.mark.parametrize("how", EXPLOITS)
def test_a_malicious_pickle_is_refused_without_a_key(store, tmp_path, how):
    marker = tmp_path / "marker"
    plant(store, "breast-cancer", 1, pickle.dumps(Exploit(marker, how)))
    with pytest.raises(ModelIntegrityError, match="breast-cancer:1: refusing to unpickle"):
        load_model(store, "breast-cancer", 1)
    assert not marker.exists()


@pytest.mark.parametrize("how", EXPLOITS)
def test_a_malicious_pickle_is_refused_with_a_key_before_unpickling(signed, tmp_path, how):
    marker = tmp_path / "marker"
    plant(signed, "breast-cancer", 1, pickle.dumps(Exploit(marker, how)))
    with pytest.raises(ModelIntegrityError, match="bad manifest signature"):
        load_model(signed, "breast-cancer", 1)
    assert not marker.exists()


def test_a_malicious_pickle_signed_with_another_key_is_refused(signed, tmp_path):
    marker = tmp_path / "marker"
    plant(signed, "breast-cancer", 1, pickle.dumps(Exploit(marker, "os.system")))
    # The attacker signs the changed manifest with a key of their own.
    data = json.loads((signed.version_dir("breast-cancer", 1) / "manifest.json").read_text())
    data.update(SigningKeys((OTHER_KEY.encode(),)).sign(data))
    (signed.version_dir("breast-cancer", 1) / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelIntegrityError, match="signed with a key that is not in the key file"):
        load_model(signed, "breast-cancer", 1)
    assert not marker.exists()


def test_an_unsigned_model_is_refused_when_a_key_is_set(store, tmp_path):
    strict = ModelStore(store.root, refresh_seconds=0, keys=keys(tmp_path, KEY))
    with pytest.raises(ModelIntegrityError, match="unsigned manifest.*tabserve sign"):
        load_model(strict, "breast-cancer", 1)


def test_a_signed_model_loads_and_one_changed_byte_is_refused(signed):
    assert load_model(signed, "breast-cancer", 1).model is not None
    directory = signed.version_dir("breast-cancer", 1)
    text = (directory / "manifest.json").read_text()
    # One byte of the manifest: the row count of the reference statistics.
    changed = text.replace('"rows": 569', '"rows": 568', 1)
    assert changed != text
    (directory / "manifest.json").write_text(changed)
    with pytest.raises(ModelIntegrityError, match="bad manifest signature"):
        load_model(signed, "breast-cancer", 1)
    (directory / "manifest.json").write_text(text)
    model_file = directory / json.loads(text)["model_file"]
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        load_model(signed, "breast-cancer", 1)


def test_a_manifest_copied_to_another_version_is_refused(signed):
    shutil.copytree(signed.version_dir("breast-cancer", 1), signed.root / "breast-cancer" / "7")
    with pytest.raises(ModelIntegrityError, match="describes breast-cancer:1"):
        load_model(signed, "breast-cancer", 7)


def test_rotation_old_key_verifies_until_removed(signed, tmp_path):
    rotating = ModelStore(signed.root, refresh_seconds=0,
                          keys=keys(tmp_path, OTHER_KEY, KEY))  # new key first, old still there
    assert load_model(rotating, "breast-cancer", 1).model is not None
    manifest = rotating.sign("breast-cancer", 1)
    assert manifest.signing_key_id == key_id(OTHER_KEY.encode())
    rotated = ModelStore(signed.root, refresh_seconds=0, keys=keys(tmp_path, OTHER_KEY))
    assert load_model(rotated, "breast-cancer", 1).model is not None
    with pytest.raises(ModelIntegrityError, match="not in the key file"):
        load_model(signed, "breast-cancer", 1)  # the old key alone no longer verifies


def test_models_saved_with_a_key_are_signed(tmp_path):
    store = ModelStore(tmp_path / "artifacts", refresh_seconds=0, keys=keys(tmp_path, KEY))
    manifest = train_demo(store, "logistic")
    assert manifest.signature and manifest.signing_key_id == key_id(KEY.encode())
    assert load_model(store, manifest.name, manifest.version).model is not None


@pytest.mark.parametrize("content,problem", [
    ("", "holds no key"), ("short\n", "at least 32 characters"),
])
def test_weak_or_empty_key_files_are_refused(tmp_path, content, problem):
    (tmp_path / "keys.txt").write_text(content)
    with pytest.raises(ConfigError, match=problem):
        SigningKeys.from_file(tmp_path / "keys.txt", tmp_path / "artifacts")


def test_a_key_file_inside_the_artifacts_directory_is_refused(store):
    inside = key_file(store.root / "keys.txt", KEY)
    settings = Settings(artifacts_dir=store.root, model_signing_key_file=inside)
    with pytest.raises(ConfigError, match="outside the artifacts directory"):
        ModelStore.from_settings(settings)


@pytest.mark.parametrize("ref", ["../etc", "..", "a/../b", "./x", "m:../1", "m:1/..", "/etc"])
def test_traversal_names_are_refused(ref):
    with pytest.raises(ValidationError):
        parse_ref(ref)


@pytest.mark.parametrize("model_file", [
    "../../../../etc/hostname", "/etc/hostname", "..", "sub/model.pkl", ".hidden",
])
def test_a_model_file_outside_its_folder_is_refused(store, model_file):
    directory = store.version_dir("breast-cancer", 1)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["model_file"] = model_file
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="unreadable manifest.*not a plain file name"):
        load_model(store, "breast-cancer", 1)


def test_links_out_of_the_artifacts_directory_are_refused(store, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(store.version_dir("breast-cancer", 1), outside)
    (store.root / "breast-cancer" / "2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelIntegrityError, match="link leads out of the artifacts"):
        load_model(store, "breast-cancer", 2)
    directory = store.version_dir("breast-cancer", 1)
    model_file = json.loads((directory / "manifest.json").read_text())["model_file"]
    (directory / model_file).unlink()
    (directory / model_file).symlink_to(outside / model_file)
    with pytest.raises(ModelIntegrityError, match="link leads out of the artifacts"):
        load_model(store, "breast-cancer", 1)


def test_another_library_version_is_refused_naming_both(store):
    directory = store.version_dir("breast-cancer", 1)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["library_versions"]["xgboost"] = "0.0.1"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    installed = __import__("xgboost").__version__
    with pytest.raises(ModelLoadError, match=f"xgboost 0.0.1 at training, {installed} installed"
                       ".*TABSERVE_ALLOW_VERSION_MISMATCH"):
        load_model(store, "breast-cancer", 1)
    store.allow_version_mismatch = True
    assert load_model(store, "breast-cancer", 1).model is not None


def _frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n = 300
    frame = pd.DataFrame({"region": rng.choice(["north", "south", "east"], n),
                          "income": rng.normal(50, 15, n), "age": rng.integers(18, 80, n)})
    classes = frame.assign(label=np.where(frame.income > 50, "yes", "no"))
    values = frame.assign(price=frame.income * 2 + rng.normal(0, 1, n))
    return classes, values


def test_every_model_the_project_trains_loads_through_the_allow_list(tmp_path):
    store = ModelStore(tmp_path / "artifacts", refresh_seconds=0)
    classes, values = _frames()
    classes.to_csv(tmp_path / "c.csv", index=False)
    values.to_csv(tmp_path / "v.csv", index=False)
    algorithms = ["xgboost", "random-forest", "logistic", "hist-gradient-boosting"]
    manifests = [train_demo(store, a) for a in algorithms]
    for algorithm in algorithms[1:]:  # xgboost takes no text columns
        manifests.append(train_from_file(store, tmp_path / "c.csv", "label",
                                         name=f"c-{algorithm}", algorithm=algorithm))
        manifests.append(train_from_file(store, tmp_path / "v.csv", "price",
                                         name=f"v-{algorithm}", algorithm=algorithm))
    for manifest in manifests:
        _assert_same_predictions(store, manifest, classes.drop(columns="label"))


def test_imported_pickles_load_through_the_allow_list(tmp_path, demo_data):
    names, X = demo_data
    frame = pd.DataFrame(X[:, :6], columns=names[:6])
    y = (X[:, 0] > 14).astype(int)
    store = ModelStore(tmp_path / "artifacts", refresh_seconds=0)
    models = {
        "extra-trees": ExtraTreesClassifier(n_estimators=20, random_state=0).fit(frame, y),
        "scaled-logistic": make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, y),
        "log-forest": make_pipeline(FunctionTransformer(np.log1p),
                                    RandomForestRegressor(n_estimators=10, random_state=0)
                                    ).fit(frame, X[:, 7]),
    }
    frame.assign(label=y).to_parquet(tmp_path / "sample.parquet")
    for name, model in models.items():
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(model))
        manifest = import_model(store, tmp_path / f"{name}.pkl", name, tmp_path / "sample.parquet")
        loaded = load_model(store, manifest.name, manifest.version)
        np.testing.assert_array_equal(loaded.model.predict(frame), model.predict(frame))


def _assert_same_predictions(store: ModelStore, manifest, frame: pd.DataFrame) -> None:
    loaded = load_model(store, manifest.name, manifest.version)
    directory = store.version_dir(manifest.name, manifest.version)
    raw = (directory / manifest.model_file).read_bytes()
    if manifest.compression == "gzip":
        import gzip

        raw = gzip.decompress(raw)
    reference = pickle.loads(raw)  # noqa: S301 - our own file, to compare against
    if manifest.input_kind == "numpy":
        rows = np.random.default_rng(1).normal(10, 5, (50, len(manifest.features)))
    else:
        rows = frame.iloc[:50].astype({"income": "float64", "age": "float64"})
    np.testing.assert_array_equal(loaded.model.predict(rows), reference.predict(rows))


def test_an_imported_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Exploit(marker, "os.system")))
    (tmp_path / "sample.csv").write_text("a,b\n1,2\n")
    store = ModelStore(tmp_path / "artifacts", refresh_seconds=0)
    with pytest.raises(ValidationError, match="refusing to unpickle posix.system"):
        import_model(store, tmp_path / "evil.pkl", "evil", tmp_path / "sample.csv")
    assert not marker.exists() and not store.list_models(fresh=True)


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_xgboost_models_are_imported_without_pickle(tmp_path, demo_data, suffix):
    import xgboost

    names, X = demo_data
    frame = pd.DataFrame(X, columns=names)
    y = (X[:, 0] > 14).astype(int)
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(frame, y)
    model.save_model(tmp_path / f"model{suffix}")
    frame.assign(label=y).to_csv(tmp_path / "sample.csv", index=False)
    store = ModelStore(tmp_path / "artifacts", refresh_seconds=0)
    manifest = import_model(store, tmp_path / f"model{suffix}", "xgb", tmp_path / "sample.csv",
                            target="label")
    assert manifest.task == "classification" and manifest.classes == [0, 1]
    loaded = load_model(store, "xgb", manifest.version)
    np.testing.assert_allclose(loaded.model.predict_proba(frame), model.predict_proba(frame))


def _stack_global(module: str, name: str) -> bytes:
    def short(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    return b"\x80\x04" + short(module) + short(name) + b"\x93."


def test_the_allow_list_refuses_builtins_that_run_code():
    for payload in (b"cbuiltins\neval\n(S'1'\ntR.", b"cbuiltins\ngetattr\n(S'1'\nS'x'\ntR.",
                    b"cnumpy\ntesting\n.", b"cnumpy.lib.format\nos\n.",
                    # Protocol 4 resolves dotted names: sklearn.base.inspect.getattr_static.
                    _stack_global("sklearn", "base.inspect.getattr_static")):
        with pytest.raises(ModelIntegrityError, match="refusing to unpickle"):
            restricted_loads(payload)


def test_a_refused_default_model_makes_the_service_not_ready(signed, tmp_path, redis_server,
                                                             demo_rows):
    """With a key set, an unsigned default model is refused and /readyz answers 503 until
    `tabserve sign` signs it; the service picks the signature up without a restart."""
    key_path = key_file(tmp_path / "keys.txt", KEY)
    version = signed.root / "breast-cancer" / "2"
    shutil.copytree(signed.version_dir("breast-cancer", 1), version)
    data = json.loads((version / "manifest.json").read_text())
    data.update(version=2, signature=None, signing_key_id=None)
    (version / "manifest.json").write_text(json.dumps(data))
    signed.promote("breast-cancer", 2)
    settings = Settings(artifacts_dir=signed.root, redis_url=redis_server.url,
                        default_model="breast-cancer", model_signing_key_file=key_path,
                        data_dir=str(tmp_path / "data"), worker_metrics_port=0)
    server = ApiServer(tabserve_env(settings.as_env()), tmp_path, workers=1)
    try:
        ready = requests.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert "unsigned manifest" in ready.text
        body = {"instances": demo_rows[:2]}
        refused = requests.post(server.url + "/predict", json=body, timeout=10)
        assert refused.status_code == 503 and "unsigned" in refused.text, refused.text
        pinned = requests.post(server.url + "/predict", params={"model": "breast-cancer:1"},
                               json=body, timeout=10)
        assert pinned.status_code == 200, pinned.text  # the signed version still serves
        result = subprocess.run([sys.executable, "-m", "cli", "sign", "breast-cancer:2"],
                                cwd=ROOT, env=tabserve_env(settings.as_env()),
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0 and "signed breast-cancer:2" in result.stdout, result.stderr
        wait_until(lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 200,
                   30, "/readyz after signing")
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_loads_through_the_allow_list(demo_data, protocol):
    names, X = demo_data
    y = (X[:, 0] > 14).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[:100], y[:100])
    loaded = restricted_loads(pickle.dumps(model, protocol=protocol))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_tabserve_sign_all_signs_every_version(store, tmp_path):
    train_demo(store, "logistic")  # version 2
    settings = Settings(artifacts_dir=store.root,
                        model_signing_key_file=key_file(tmp_path / "keys.txt", KEY))
    env = tabserve_env(settings.as_env())
    run = [sys.executable, "-m", "cli", "sign"]
    both = subprocess.run([*run, "--all", "breast-cancer"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert both.returncode == 2 and "not both" in both.stderr
    result = subprocess.run([*run, "--all"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"signed breast-cancer:{v} (key {key_id(KEY.encode())})" for v in (1, 2)]
    strict = ModelStore.from_settings(settings)
    for version in (1, 2):
        assert load_model(strict, "breast-cancer", version).model is not None
