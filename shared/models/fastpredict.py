"""Fast paths to a model's own predict_proba / predict, for the model kinds they know.

Each runs the same native code the library's method runs, on the same values, and skips
only its per-call Python: XGBoost's scikit-learn wrapper (config round trips, input type
sniffing, a class built per call) and a forest's joblib pool per call (the trees are summed
in the order the library sums them with one job). For one row, that per-call Python is most
of the time the library's method takes (docs/benchmarks.md, "In-process model time").
A few rows through XGBoost skip libxgboost too: its trees as NumPy arrays, with its
arithmetic (shared/models/xgbtrees.py), which take less time and far less CPU inside a server.

A path is used only after it has matched the model's own method bit for bit on probe rows
when the model is loaded, and only for finite NumPy input (anything else goes to the
model's own method, which handles or rejects it as it always has).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from shared.models.xgbtrees import tree_arrays

logger = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]
# Rows x tree nodes up to which XGBoost's trees are scored as NumPy arrays, not by libxgboost:
# up to here the arrays are faster even in a tight loop (docs/benchmarks.md)
ARRAY_CELLS = 1 << 13
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class FastPath:
    """predict_proba (classifiers) or predict (regressors), checked against the model."""

    def __init__(self, kind: str, proba: bool, fn: Predictor) -> None:
        self.kind = kind
        self.proba = proba  # True: stands for predict_proba; False: for predict
        self._fn = fn

    def __call__(self, X: np.ndarray) -> np.ndarray | None:
        """The model's output for X, or None when X is not for this path."""
        if X.dtype not in _FLOATS or X.ndim != 2 or not X.shape[0] or not np.isfinite(X).all():
            return None  # no rows: the model's own answer (libxgboost's shape differs)
        return self._fn(X)


def compile_fast_path(model: Any, probe: np.ndarray) -> FastPath | None:
    """A fast path for this model, if there is one and it agrees with the model on probe."""
    for build in (_xgboost, _forest):
        try:
            built = build(model, probe)
        except Exception:  # library internals not as expected: no fast path, never an error
            logger.debug("no fast path from %s", build.__name__, exc_info=True)
            continue
        if built is None:
            continue
        kind, proba, fn = built
        path = FastPath(kind, proba, fn)
        if _agrees(model, path, probe):
            return path
        logger.warning("fast path %s disagrees with the model's own output; not used", kind)
        return None
    return None


def _agrees(model: Any, path: FastPath, probe: np.ndarray) -> bool:
    """Bit for bit the model's own output: on the probe, on one row, in column-major order."""
    try:
        for X in (probe, probe[:1], np.asfortranarray(probe)):
            expected = np.asarray(model.predict_proba(X) if path.proba else model.predict(X))
            if not _identical(path(X), expected):
                return False
    except Exception:  # the model cannot score the probe: no claim of agreement
        logger.debug("fast path check failed", exc_info=True)
        return False
    return True


def _identical(got: np.ndarray | None, expected: np.ndarray) -> bool:
    """Same dtype, shape and bytes, whatever the memory order."""
    return (got is not None and got.dtype == expected.dtype and got.shape == expected.shape
            and np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes())


def _xgboost(model: Any, probe: np.ndarray) -> tuple[str, bool, Predictor] | None:
    try:
        import xgboost
        from xgboost.core import _LIB, _check_call, c_bst_ulong, make_jcargs
    except ImportError:
        return None
    if type(model) is xgboost.XGBClassifier:
        if model.objective not in ("binary:logistic", "multi:softprob"):
            return None
        proba = True
    elif type(model) is xgboost.XGBRegressor:
        if not isinstance(model.objective, str):
            return None
        proba = False
    else:
        return None
    if model.booster not in (None, "gbtree"):
        return None
    booster = model.get_booster()
    if booster.num_features() != probe.shape[1]:
        return None
    begin, end = model._get_iteration_range(None)
    args = make_jcargs(type=0, training=False, iteration_begin=int(begin),
                       iteration_end=int(end), missing=model.missing, strict_shape=False,
                       cache_id=0)
    handle = booster.handle
    typestr = {np.dtype(np.float32): "<f4", np.dtype(np.float64): "<f8"}
    per_thread = threading.local()

    def native(X: np.ndarray) -> np.ndarray:
        # What Booster.inplace_predict does for a dense NumPy array, without its Python.
        proxy = getattr(per_thread, "proxy", None)
        if proxy is None:
            proxy = per_thread.proxy = _ProxyDMatrix(_LIB, _check_call)
        strides = "null" if X.flags.c_contiguous else f"[{X.strides[0]},{X.strides[1]}]"
        interface = (f'{{"data":[{X.ctypes.data},true],"shape":[{X.shape[0]},{X.shape[1]}],'
                     f'"strides":{strides},"typestr":"{typestr[X.dtype]}","version":3}}')
        shape = ctypes.POINTER(c_bst_ulong)()
        dims = c_bst_ulong()
        preds = ctypes.POINTER(ctypes.c_float)()
        _check_call(_LIB.XGBoosterPredictFromDense(
            handle, interface.encode(), args, proxy.handle, ctypes.byref(shape),
            ctypes.byref(dims), ctypes.byref(preds)))
        out_shape = [shape[i] for i in range(dims.value)]
        out = np.empty(out_shape, dtype=np.float32)
        ctypes.memmove(out.ctypes.data, preds, out.nbytes)  # the library reuses its buffer
        return out

    raw, limit = _with_tree_arrays(native, model, booster, int(begin), int(end), probe)
    kind = f"xgboost (trees as arrays up to {limit} rows)" if limit else "xgboost"
    if not proba:
        return kind, False, raw
    n_classes = int(model.n_classes_)

    def predict_proba(X: np.ndarray) -> np.ndarray:
        p = raw(X)
        if p.ndim == 2 and p.shape[1] == n_classes:
            return p
        # xgboost's _cls_predict_proba: vstack((1.0 - p, p)).transpose(), the same values
        out = np.empty((2, p.shape[0]), dtype=p.dtype)
        np.subtract(1.0, p, out=out[0])
        out[1] = p
        return out.T

    return kind, True, predict_proba


def _with_tree_arrays(native: Predictor, model: Any, booster: Any, begin: int, end: int,
                      probe: np.ndarray) -> tuple[Predictor, int]:
    """native, with inputs of up to `limit` rows scored by the trees as NumPy arrays
    (shared/models/xgbtrees.py) when those reproduce native's output on the probe bit for bit, one
    row at a time and `limit` rows at once; and limit (0: native alone)."""
    try:  # over ARRAY_CELLS nodes, even one row is faster through libxgboost
        arrays = tree_arrays(booster, model.objective, begin, end, model.missing, ARRAY_CELLS)
    except Exception:  # a model file laid out otherwise: libxgboost alone, never an error
        logger.debug("no tree arrays", exc_info=True)
        arrays = None
    if arrays is None:
        return native, 0
    limit = ARRAY_CELLS // arrays.nodes
    for rows in [probe[:limit], *(probe[i:i + 1] for i in range(len(probe)))]:
        if not _identical(arrays(rows), native(rows)):
            logger.warning("XGBoost trees as arrays disagree with libxgboost; not used")
            return native, 0

    def predict(X: np.ndarray) -> np.ndarray:
        return arrays(X) if X.shape[0] <= limit else native(X)

    return predict, limit


class _ProxyDMatrix:
    """An XGBoost proxy DMatrix, reused by one thread's predictions and freed with it.

    Without one, each call makes a fresh proxy, and its set-up reads the cgroup CPU quota
    from /sys: several system calls on every prediction. A proxy only holds the array the
    current call passes; one thread's calls never overlap, so reusing it is safe.
    """

    def __init__(self, lib: Any, check: Callable[[int], None]) -> None:
        self._lib = lib
        self.handle = ctypes.c_void_p()
        check(lib.XGProxyDMatrixCreate(ctypes.byref(self.handle)))

    def __del__(self) -> None:
        if self.handle:
            self._lib.XGDMatrixFree(self.handle)


def _forest(model: Any, probe: np.ndarray) -> tuple[str, bool, Predictor] | None:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    if type(model) not in (RandomForestClassifier, ExtraTreesClassifier,
                           RandomForestRegressor, ExtraTreesRegressor):
        return None
    if model.n_outputs_ != 1 or model.n_features_in_ != probe.shape[1]:
        return None
    if model.n_jobs not in (None, 1):  # several jobs sum the trees in another order
        return None
    trees = [est.tree_ for est in model.estimators_]
    count = len(trees)
    if isinstance(model, (RandomForestClassifier, ExtraTreesClassifier)):
        n_classes = int(model.n_classes_)

        def predict_proba(X: np.ndarray) -> np.ndarray:
            X32 = np.asarray(X, dtype=np.float32)  # as the forest's input check converts
            out = np.zeros((X32.shape[0], n_classes), dtype=np.float64)
            for tree in trees:  # one job's order: tree by tree, summed in place
                out += tree.predict(X32)[:, :n_classes]
            out /= count
            return out

        return "forest", True, predict_proba

    def predict(X: np.ndarray) -> np.ndarray:
        X32 = np.asarray(X, dtype=np.float32)
        out = np.zeros(X32.shape[0], dtype=np.float64)
        for tree in trees:
            out += tree.predict(X32)[:, 0]
        out /= count
        return out

    return "forest", False, predict
