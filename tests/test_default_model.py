"""The default model (what a request without ?model= gets) is recorded in the artifacts
directory: adding a model never changes it, and readiness follows it, not the count of names."""

from __future__ import annotations

import json
import shutil
import time

import pandas as pd
import pytest
import requests

from shared.errors import ModelNotFoundError
from shared.models.store import DEFAULT_FILE, ModelStore
from shared.models.training import train_from_file
from tests.artifacts import copy_demo
from tests.servers import ApiServer, tabserve_env


@pytest.fixture
def houses_csv(tmp_path, demo_data):
    """A small regression data set (a second model's training file)."""
    names, X = demo_data
    frame = pd.DataFrame(X[:, :5], columns=["rooms", "age", "tax", "area", "lot"])
    frame["price"] = X[:, 5] * 1000
    path = tmp_path / "houses.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def one_model(artifacts_dir, tmp_path):
    """A copy of the demo artifacts (one model) with no default recorded yet, as a
    directory written before defaults were recorded."""
    root = copy_demo(artifacts_dir, tmp_path / "artifacts")
    assert not (root / DEFAULT_FILE).exists()
    return root


def test_the_first_model_saved_is_recorded_as_the_default(tmp_path, houses_csv):
    store = ModelStore(tmp_path / "empty", refresh_seconds=0)
    train_from_file(store, houses_csv, "price")
    assert json.loads((store.root / DEFAULT_FILE).read_text()) == {"name": "houses"}


def test_a_second_model_leaves_the_default_as_it_was(one_model, houses_csv):
    train_from_file(ModelStore(one_model, refresh_seconds=0), houses_csv, "price")
    store = ModelStore(one_model, refresh_seconds=0)
    assert store.resolve(None) == ("breast-cancer", 1)
    assert store.resolve(None, "houses") == ("houses", 1)  # TABSERVE_DEFAULT_MODEL wins
    assert store.resolve("houses") == ("houses", 1)


def test_the_first_default_recorded_stays(one_model):
    store = ModelStore(one_model, refresh_seconds=0)
    assert store.record_default("breast-cancer") == "breast-cancer"
    assert ModelStore(one_model).record_default("other") == "breast-cancer"
    assert ModelStore(one_model).default_name() == "breast-cancer"


def test_several_models_and_none_recorded_is_a_clear_404(one_model):
    shutil.copytree(one_model / "breast-cancer", one_model / "other")
    with pytest.raises(ModelNotFoundError, match="none is recorded as the default"):
        ModelStore(one_model).resolve(None)


def test_training_a_second_model_on_a_live_host_keeps_the_api_serving(
        base_settings, one_model, houses_csv, demo_rows, tmp_path):
    settings = base_settings.with_overrides(artifacts_dir=one_model, default_model=None,
                                            data_dir=str(tmp_path / "data"))
    api = ApiServer(tabserve_env(settings.as_env()), tmp_path, workers=2)
    try:
        assert requests.get(api.url + "/readyz", timeout=10).status_code == 200
        train_from_file(ModelStore(one_model), houses_csv, "price")
        names = {m["name"] for m in requests.get(api.url + "/models", timeout=10).json()
                 ["models"]}
        assert names == {"breast-cancer", "houses"}
        # Past the store's listing refresh (2 s) in both gunicorn workers.
        until = time.monotonic() + 5
        while time.monotonic() < until:
            r = requests.post(api.url + "/predict", json={"features": demo_rows[0]},
                              timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["model"]["name"] == "breast-cancer"
            ready = requests.get(api.url + "/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
        houses = requests.post(api.url + "/predict?model=houses", json={"features": {
            "rooms": 1.0, "age": 2.0, "tax": 3.0, "area": 4.0, "lot": 5.0}}, timeout=10)
        assert houses.status_code == 200, houses.text
    finally:
        api.stop()
