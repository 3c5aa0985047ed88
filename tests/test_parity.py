"""Every optimised path gives, bit for bit, what the model's own predict_proba gives on a
DataFrame of the same rows: the online validator (NumPy rows or a DataFrame) and the batch
reader and validator (Arrow chunks)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from shared.jobs.chunks import check_chunk, score_chunk
from shared.jobs.inputs import arrow_type, iter_chunks
from shared.models.loading import load_model
from shared.models.store import ModelStore
from shared.models.training import train_demo, train_from_file


def _via_batch(loaded, frame: pd.DataFrame, chunk_rows: int) -> np.ndarray:
    features = loaded.manifest.features
    fh = io.BytesIO(frame.to_csv(index=False).encode())
    types = {f.name: arrow_type(f) for f in features}
    parts = []
    for chunk in iter_chunks(fh, "csv", types, [f.name for f in features], chunk_rows):
        _, result = score_chunk(loaded, check_chunk(chunk.table, chunk.start_row, features))
        parts.append(result.probabilities)
    return np.concatenate(parts)


def _via_online(loaded, frame: pd.DataFrame) -> np.ndarray:
    rows = frame.to_dict(orient="records")
    X = loaded.validator.validate(rows)
    return loaded.predict(X).probabilities


@pytest.mark.filterwarnings("ignore:X has feature names")  # fitted on NumPy, asked on frames
@pytest.mark.parametrize("algorithm", ["xgboost", "random-forest", "logistic"])
def test_matrix_models(tmp_path, demo_data, algorithm):
    names, X = demo_data
    store = ModelStore(tmp_path)
    manifest = train_demo(store, algorithm)
    loaded = load_model(store, manifest.name, manifest.version)
    assert loaded.validator.as_frame is False  # the fast path: a NumPy matrix
    assert (loaded.fast is not None) == (algorithm != "logistic")  # shared.models.fastpredict
    frame = pd.DataFrame(X, columns=names)
    expected = loaded.model.predict_proba(frame)
    np.testing.assert_array_equal(_via_online(loaded, frame), expected)
    step = 1 if algorithm == "xgboost" else 5  # every row through XGBoost's tree arrays
    for i in range(0, len(frame), step):  # one row: /predict's usual request
        one = frame.iloc[i:i + 1]  # (BLAS may round a 1-row product otherwise than a batch's)
        np.testing.assert_array_equal(_via_online(loaded, one), loaded.model.predict_proba(one))
    batch = _via_batch(loaded, frame, 100)
    if algorithm == "logistic":  # BLAS blocks a 100-row product otherwise than a 569-row one
        np.testing.assert_allclose(batch, expected, rtol=1e-12, atol=1e-15)
    else:
        np.testing.assert_array_equal(batch, expected)
    labels = loaded.predict(frame.to_numpy()).labels
    np.testing.assert_array_equal(labels, loaded.model.predict(frame))


def test_dataframe_model_with_categories(tmp_path):
    rng = np.random.default_rng(3)
    n = 600
    frame = pd.DataFrame({
        "city": rng.choice(["paris", "rome", "oslo"], n),
        "size": rng.normal(100, 20, n).round(2),
        "rooms": rng.integers(1, 6, n),
    })
    target = np.where((frame["city"] == "rome") ^ (frame["size"] > 105), "yes", "no")
    path = tmp_path / "shops.csv"
    frame.assign(busy=target).to_csv(path, index=False)
    store = ModelStore(tmp_path / "artifacts")
    manifest = train_from_file(store, path, "busy", name="shops")
    loaded = load_model(store, manifest.name, manifest.version)
    assert loaded.validator.as_frame is True
    typed = frame.astype({"size": "float64", "rooms": "float64", "city": object})
    expected = loaded.model.predict_proba(typed)
    np.testing.assert_array_equal(_via_online(loaded, frame), expected)
    np.testing.assert_array_equal(_via_batch(loaded, frame, 128), expected)
