"""The fast paths to predict_proba / predict give the model's own output bit for bit, one row
or many, in either memory order; they are used only where they agree, and anything they do
not take (missing values, other model kinds) goes to the model's own method."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_diabetes, load_wine
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression

from shared import fastpredict
from shared.fastpredict import compile_fast_path


def _wine():
    data = load_wine()
    return data.data, data.target


def _diabetes():
    data = load_diabetes()
    return data.data, data.target


def _early_stopped():
    X, y = _wine()
    model = xgboost.XGBClassifier(n_estimators=200, max_depth=3, early_stopping_rounds=5,
                                  n_jobs=1)
    model.fit(X[::2], y[::2], eval_set=[(X[1::2], y[1::2])], verbose=False)
    assert model.best_iteration < 199  # the path must honour it
    return model, X


CASES = {
    "xgboost multiclass": lambda: (xgboost.XGBClassifier(n_estimators=30, n_jobs=1)
                                   .fit(*_wine()), _wine()[0]),
    "xgboost binary": lambda: (xgboost.XGBClassifier(n_estimators=30, n_jobs=1)
                               .fit(_wine()[0], _wine()[1] == 1), _wine()[0]),
    "xgboost early-stopped": _early_stopped,
    "xgboost regressor": lambda: (xgboost.XGBRegressor(n_estimators=30, n_jobs=1)
                                  .fit(*_diabetes()), _diabetes()[0]),
    "forest classifier": lambda: (RandomForestClassifier(30, random_state=0, n_jobs=1)
                                  .fit(*_wine()), _wine()[0]),
    "extra-trees classifier": lambda: (ExtraTreesClassifier(30, random_state=0)
                                       .fit(*_wine()), _wine()[0]),
    "forest regressor": lambda: (RandomForestRegressor(20, random_state=0)
                                 .fit(*_diabetes()), _diabetes()[0]),
    "extra-trees regressor": lambda: (ExtraTreesRegressor(20, random_state=0)
                                      .fit(*_diabetes()), _diabetes()[0]),
}


def _own(model, X):
    return np.asarray(model.predict_proba(X) if hasattr(model, "predict_proba")
                      else model.predict(X))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_is_the_models_own_output(case):
    model, X = CASES[case]()
    path = compile_fast_path(model, X[:40])
    assert path is not None
    for rows in (X, X[7:8], np.asfortranarray(X), X.astype(np.float32), X[::3, :],
                 np.asfortranarray(X)[::2, :]):  # any layout, strided views too
        assert _same_bits(path(rows), _own(model, rows)), case
    for i in range(0, len(X), 13):  # one row at a time, as /predict sends them
        assert _same_bits(path(X[i:i + 1]), _own(model, X[i:i + 1]))


def test_missing_values_go_to_the_models_own_method():
    model, X = CASES["xgboost binary"]()
    path = compile_fast_path(model, X[:40])
    row = X[:1].copy()
    row[0, 3] = np.nan
    assert path(row) is None  # LoadedModel.predict then calls model.predict_proba
    assert path(X[:1].astype(np.float16)) is None
    assert path(X[:1].astype(np.int64)) is None


def test_other_models_have_no_fast_path():
    X, y = _wine()
    assert compile_fast_path(LogisticRegression(max_iter=5000).fit(X, y), X[:10]) is None
    forest = RandomForestClassifier(10, random_state=0, n_jobs=2).fit(X, y)
    assert compile_fast_path(forest, X[:10]) is None  # threads sum in another order


def test_a_path_that_disagrees_is_not_used(monkeypatch):
    model, X = CASES["forest classifier"]()
    real = fastpredict._forest

    def off_by_one_ulp(model, n_features):
        kind, proba, fn = real(model, n_features)
        return kind, proba, lambda rows: np.nextafter(fn(rows), 2.0)

    monkeypatch.setattr(fastpredict, "_forest", off_by_one_ulp)
    assert compile_fast_path(model, X[:40]) is None


def test_xgboost_path_from_several_threads_at_once():
    """Each thread predicts through its own proxy DMatrix: answers never cross threads (one
    proxy shared by the threads crashes this test's process)."""
    import threading

    model, X = CASES["xgboost multiclass"]()
    path = compile_fast_path(model, X[:20])
    assert path is not None and path.kind == "xgboost"
    expected = model.predict_proba(X)
    failures: list[int] = []

    def score(offset: int) -> None:
        for k in range(200):
            i = (offset + k) % len(X)
            if path(X[i:i + 1]).tobytes() != expected[i:i + 1].tobytes():
                failures.append(i)

    threads = [threading.Thread(target=score, args=(t * 37,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
