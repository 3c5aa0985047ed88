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

from shared.models import fastpredict
from shared.models.fastpredict import compile_fast_path
from shared.models.xgbtrees import tree_arrays


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

    def off_by_one_ulp(model, probe):
        kind, proba, fn = real(model, probe)
        return kind, proba, lambda rows: np.nextafter(fn(rows), 2.0)

    monkeypatch.setattr(fastpredict, "_forest", off_by_one_ulp)
    assert compile_fast_path(model, X[:40]) is None


def test_xgboost_path_from_several_threads_at_once():
    """Each thread predicts through its own proxy DMatrix: answers never cross threads (one
    proxy shared by the threads crashes this test's process)."""
    import threading

    model, X = CASES["xgboost multiclass"]()
    path = compile_fast_path(model, X[:20])
    assert path is not None and path.kind.startswith("xgboost")
    rows = 2 * fastpredict.ARRAY_CELLS  # enough rows to go to libxgboost, not the arrays
    X = np.tile(X, (rows // len(X) + 1, 1))
    expected = model.predict_proba(X)
    failures: list[int] = []

    def score(offset: int) -> None:
        for k in range(50):
            i = (offset + k * 101) % (len(X) - rows)
            if path(X[i:i + rows]).tobytes() != expected[i:i + rows].tobytes():
                failures.append(i)

    threads = [threading.Thread(target=score, args=(t * 37,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


XGBOOST_CASES = sorted(c for c in CASES if c.startswith("xgboost"))


def _deep_xgboost():
    X, y = _wine()
    return xgboost.XGBClassifier(n_estimators=20, max_depth=9, n_jobs=1,
                                 base_score=0.3).fit(X, y == 0), X


@pytest.mark.parametrize("case", [*XGBOOST_CASES, "deep"])
def test_xgboost_trees_as_arrays_are_libxgboost_bit_for_bit(case):
    """One row, a few, rows whose values sit exactly on split thresholds (a tie goes right),
    values just either side of them, and values float32 cannot hold."""
    model, X = _deep_xgboost() if case == "deep" else CASES[case]()
    booster = model.get_booster()
    begin, end = model._get_iteration_range(None)
    arrays = tree_arrays(booster, model.objective, begin, end, model.missing, 1 << 20)
    assert arrays is not None, case
    path = compile_fast_path(model, X[:40])
    assert path is not None and "as arrays" in path.kind, path and path.kind
    on_threshold = X[:50].copy()
    rng = np.random.default_rng(0)
    splits = arrays.threshold < np.inf
    for row in on_threshold:  # each row: a few features set to a threshold they are tested on
        for node in rng.choice(np.flatnonzero(splits), 5):
            row[arrays.feature[node]] = float(arrays.threshold[node])
    side = rng.choice([-np.inf, np.inf], on_threshold.shape)
    near64 = np.nextafter(on_threshold, side)  # float32 casts these back onto the threshold
    near32 = np.nextafter(on_threshold.astype(np.float32), side.astype(np.float32))
    extremes = X[:20].copy()  # beyond float32 (inf once cast), and below its smallest
    extremes[np.arange(20), np.arange(20) % X.shape[1]] = np.resize([1e300, -1e300, 1e-300], 20)
    for rows in (X, on_threshold, near64, near32.astype(np.float64),
                 X * rng.uniform(0.5, 1.5, X.shape), extremes):
        expected = booster.inplace_predict(rows, iteration_range=(begin, end))
        for i in range(len(rows)):
            assert arrays(rows[i:i + 1]).tobytes() == expected[i:i + 1].tobytes(), (case, i)
            assert _same_bits(path(rows[i:i + 1]), _own(model, rows[i:i + 1])), (case, i)
        assert arrays(rows[:8]).tobytes() == expected[:8].tobytes(), case
        assert _same_bits(path(rows), _own(model, rows)), case
    assert path(X[:0]) is None  # no rows: the model's own method answers


def test_xgboost_models_the_arrays_do_not_reproduce_go_to_libxgboost():
    X, y = _wine()
    for model in (  # "missing" other than NaN, objectives without their arithmetic
            xgboost.XGBClassifier(n_estimators=5, n_jobs=1, missing=0.0).fit(X, y == 0),
            xgboost.XGBRegressor(n_estimators=5, n_jobs=1, objective="reg:logistic")
            .fit(X, y == 0),
            xgboost.XGBRegressor(n_estimators=5, n_jobs=1, objective="reg:absoluteerror")
            .fit(X, y)):
        begin, end = model._get_iteration_range(None)
        assert tree_arrays(model.get_booster(), model.objective, begin, end,
                           model.missing, 1 << 20) is None
        path = compile_fast_path(model, X[:40])
        assert path is not None and path.kind == "xgboost"
        for i in range(0, len(X), 17):
            assert _same_bits(path(X[i:i + 1]), _own(model, X[i:i + 1]))
    X, y = _diabetes()
    big = xgboost.XGBRegressor(n_estimators=100, max_depth=8, n_jobs=1).fit(X, y)
    arrays = tree_arrays(big.get_booster(), big.objective, 0, 0, big.missing, 1 << 20)
    assert arrays is not None and arrays.nodes > fastpredict.ARRAY_CELLS
    assert tree_arrays(big.get_booster(), big.objective, 0, 0, big.missing,
                       fastpredict.ARRAY_CELLS) is None
    path = compile_fast_path(big, X[:40])  # slower as arrays than libxgboost even for a row
    assert path is not None and path.kind == "xgboost"
    assert _same_bits(path(X[:1]), _own(big, X[:1]))


def test_trees_as_arrays_that_disagree_are_not_used(monkeypatch):
    model, X = CASES["xgboost binary"]()
    real = fastpredict.tree_arrays

    def off_by_one_ulp(*args):
        arrays = real(*args)
        value = np.nextafter(arrays.value, np.float32(np.inf))
        return type(arrays)(**{**arrays.__dict__, "value": value})

    monkeypatch.setattr(fastpredict, "tree_arrays", off_by_one_ulp)
    path = compile_fast_path(model, X[:40])
    assert path is not None and path.kind == "xgboost"  # libxgboost alone
    for i in range(0, len(X), 11):
        assert _same_bits(path(X[i:i + 1]), _own(model, X[i:i + 1]))


def test_trees_that_cannot_be_read_leave_libxgboost_in_place(monkeypatch):
    model, X = CASES["xgboost binary"]()

    def unexpected_layout(*args):
        raise KeyError("split_conditions")

    monkeypatch.setattr(fastpredict, "tree_arrays", unexpected_layout)
    path = compile_fast_path(model, X[:40])
    assert path is not None and path.kind == "xgboost"
    assert _same_bits(path(X[:1]), _own(model, X[:1]))
