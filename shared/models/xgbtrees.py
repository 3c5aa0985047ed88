"""An XGBoost model's trees as NumPy arrays: a few rows scored without a call into libxgboost.

Why: a call into libxgboost for one row costs about twice as much amid a server's other work
as in a tight loop, and more again of a gunicorn worker's CPU per request. Each call parses
JSON arguments, compiles a regex, walks every tree for its depth and builds a view of each,
and between two requests the server's other work has evicted that code and data from the CPU
caches. The same trees as a handful of NumPy arrays take well under half of that, in and out
of a server's rhythm (`python -m bench.modelcall`; figures in docs/benchmarks.md). Larger
batches still go to libxgboost, which is faster there.

Exactly XGBoost's arithmetic, step by step:
- the input is cast to float32, and a node sends a value left when `value < split_condition`;
- each row's margin starts at the model's base margin and adds the trees' leaf values one tree
  at a time, in XGBoost's order, in float32 (a cumulative sum: never pairwise);
- binary:logistic applies XGBoost's sigmoid, 1 / (expf(min(-x, 88.7)) + 1 + 1e-16), in float32
  with the C library's expf, the one libxgboost calls;
- multi:softprob applies its softmax: expf(x - max), summed in double, each divided by the sum.
Only what is known to be exact is taken: numerical splits, one tree per group and iteration,
finite input (NaN is "missing" to XGBoost; the caller sends rows with any to the model), and
the objectives above plus reg:squarederror (identity); anything else gets no arrays. The
caller still checks the arrays bit for bit against the model on probe rows before using them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

_F32 = np.float32
_SIGMOID_CLAMP = float(_F32(88.7))
_SIGMOID_EPS = _F32(1e-16)
TRANSFORMS = {"binary:logistic": "sigmoid", "multi:softprob": "softmax",
              "reg:squarederror": "identity"}


@functools.cache
def _libm() -> Any:
    """The C library's expf and logf: the ones libxgboost calls."""
    lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    for name in ("expf", "logf"):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return lib


@dataclass(frozen=True)
class TreeArrays:
    """Every node of every tree, in one set of arrays. The first nodes hold the base margins
    (one per output group); a leaf's children are itself, so walking `depth` steps from the
    roots lands every row on a leaf."""

    feature: np.ndarray    # the feature a node tests (0 at leaves)
    threshold: np.ndarray  # float32; +inf at leaves, so a finite value "goes left" to itself
    left: np.ndarray       # child when value < threshold (the node itself at a leaf)
    right: np.ndarray
    value: np.ndarray      # float32 leaf values; node g < groups: group g's base margin
    roots: np.ndarray      # per group: its base node, then its tree roots in XGBoost's order
    depth: int
    transform: str

    @property
    def nodes(self) -> int:
        return len(self.threshold)

    def margins(self, X: np.ndarray) -> np.ndarray:
        """float32 margins, one column per output group (rows, groups)."""
        with np.errstate(over="ignore"):  # beyond float32: inf, as XGBoost's own cast gives
            x32 = np.asarray(X, dtype=_F32)
        child = np.where(x32.take(self.feature, axis=1) < self.threshold, self.left, self.right)
        node = self.roots[None]  # (rows, groups, 1 + trees per group) once broadcast
        if x32.shape[0] > 1:  # row r's nodes, numbered from r * nodes in the flat child array
            start = np.arange(0, child.size, self.nodes)[:, None, None]
            child += start[:, 0]
            node = node + start
        flat = child.ravel()
        for _ in range(self.depth):
            node = flat.take(node)
        if x32.shape[0] > 1:
            node -= start
        return np.cumsum(self.value.take(node), axis=-1, dtype=_F32)[..., -1]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """What libxgboost's prediction returns for X: (rows,) for one group, else
        (rows, groups), float32."""
        margin = self.margins(X)
        if self.transform == "sigmoid":
            return _sigmoid(margin[:, 0])
        if self.transform == "softmax":
            return _softmax(margin)
        return margin[:, 0]


def _expf(values: np.ndarray) -> np.ndarray:
    expf = _libm().expf
    return np.array([expf(v) for v in values.tolist()], dtype=_F32)


def _sigmoid(margin: np.ndarray) -> np.ndarray:
    out = np.empty(margin.shape[0], dtype=_F32)
    expf = _libm().expf
    for i, m in enumerate(margin.tolist()):  # float32 scalars: float32 arithmetic
        out[i] = _F32(1.0) / ((_F32(expf(min(-m, _SIGMOID_CLAMP))) + _F32(1.0)) + _SIGMOID_EPS)
    return out


def _softmax(margin: np.ndarray) -> np.ndarray:
    out = np.empty_like(margin)
    for i, row in enumerate(margin):
        e = _expf(row - row.max())
        total = 0.0
        for v in e.tolist():  # a double sum, in order, as XGBoost's loop adds
            total += v
        out[i] = e / _F32(total)
    return out


def tree_arrays(booster: Any, objective: str, begin: int, end: int, missing: float,
                max_nodes: int) -> TreeArrays | None:
    """The arrays for booster's iterations [begin, end), or None if its trees or objective are
    not ones these arrays reproduce exactly, or the trees have over max_nodes nodes."""
    transform = TRANSFORMS.get(objective)
    if transform is None or not math.isnan(missing):
        return None
    raw = booster.save_raw(raw_format="json")
    if len(raw) > max_nodes * 1024:  # XGBoost's JSON takes ~100-200 bytes a node
        return None
    model = json.loads(raw, parse_float=str)
    learner = model["learner"]
    gbtree = learner["gradient_booster"]
    if gbtree.get("name") != "gbtree" or int(
            gbtree["model"]["gbtree_model_param"].get("num_parallel_tree", "1")) != 1:
        return None
    groups = max(1, int(learner["learner_model_param"].get("num_class", "0")))
    if (transform == "softmax") != (groups > 1):
        return None
    bases = _base_margins(learner["learner_model_param"]["base_score"], transform, groups)
    if bases is None:
        return None
    indptr = gbtree["model"]["iteration_indptr"]
    end = end or len(indptr) - 1  # XGBoost's (0, 0): every iteration
    first, last = int(indptr[begin]), int(indptr[end])
    trees = gbtree["model"]["trees"][first:last]
    tree_group = gbtree["model"]["tree_info"][first:last]
    own = list(range(groups))  # nodes 0..groups-1: each group's base margin
    feature, threshold, left, right = [[0] * groups], [[np.inf] * groups], [own], [own]
    value: list[Any] = [bases]
    roots: list[list[int]] = [[g] for g in own]
    offset, depth = groups, 0
    for tree, group in zip(trees, tree_group, strict=True):
        arrays = _tree(tree, offset)
        if arrays is None:
            return None
        f, t, lo, hi, v, d = arrays
        feature.append(f)
        threshold.append(t)
        left.append(lo)
        right.append(hi)
        value.append(v)
        roots[int(group)].append(offset)
        offset += len(t)
        depth = max(depth, d)
    if len({len(r) for r in roots}) != 1 or offset > max_nodes:
        return None
    return TreeArrays(
        feature=np.concatenate(feature).astype(np.intp),
        threshold=np.concatenate(threshold).astype(_F32),
        left=np.concatenate(left).astype(np.intp),
        right=np.concatenate(right).astype(np.intp),
        value=np.concatenate(value).astype(_F32),
        roots=np.array(roots, dtype=np.intp),
        depth=depth, transform=transform)


def _tree(tree: dict[str, Any], offset: int) -> tuple[Any, ...] | None:
    """One tree's nodes, numbered from offset; None for what is not a plain numerical tree."""
    param = tree["tree_param"]
    if int(param.get("size_leaf_vector", "1")) > 1 or any(tree["split_type"]):
        return None
    n = int(param["num_nodes"])
    lo = np.array(tree["left_children"], dtype=np.intp)
    hi = np.array(tree["right_children"], dtype=np.intp)
    conditions = _exact_float32(tree["split_conditions"])
    if conditions is None or len(lo) != n or int(param.get("num_deleted", "0")):
        return None
    leaf = lo == -1
    own = np.arange(n, dtype=np.intp)
    level = np.zeros(n, dtype=np.intp)
    for i in range(n):  # children come after their parent in XGBoost's numbering
        if not leaf[i]:
            if lo[i] <= i or hi[i] <= i:
                return None
            level[lo[i]] = level[hi[i]] = level[i] + 1
    return (np.where(leaf, 0, np.array(tree["split_indices"], dtype=np.intp)),
            np.where(leaf, _F32(np.inf), conditions),
            np.where(leaf, own, lo) + offset,
            np.where(leaf, own, hi) + offset,
            np.where(leaf, conditions, _F32(0.0)),
            int(level.max()))


def _exact_float32(texts: list[str]) -> np.ndarray | None:
    """float32 values from XGBoost's shortest decimal forms; None unless each reads back
    exactly (the float32 whose shortest form is that text)."""
    values = np.array([float(t) for t in texts], dtype=np.float64).astype(_F32)
    for text, v in zip(texts, values.tolist(), strict=True):
        if Decimal(text) != Decimal(np.format_float_scientific(_F32(v), unique=True)):
            return None
    return values


def _base_margins(text: str, transform: str, groups: int) -> list[float] | None:
    """The base score as the margins XGBoost starts each row from, one per group, float32."""
    scores = _exact_float32([t.strip() for t in text.strip("[]").split(",")])
    if scores is None or len(scores) not in (1, groups):
        return None
    if transform != "sigmoid":  # identity: the score is the margin
        return [float(v) for v in np.broadcast_to(scores, groups)]
    score = _F32(scores[0])
    if groups != 1 or not 0.0 < score < 1.0:
        return None
    # the logistic objective's ProbToMargin: -logf(1/p - 1)
    return [-float(_libm().logf(float(_F32(_F32(1.0) / score) - _F32(1.0))))]
