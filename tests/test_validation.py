"""RowValidator: JSON rows to model input, with every problem named."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.errors import ValidationError
from shared.models.schema import FeatureSpec, Schema
from shared.models.validation import RowValidator

SCHEMA = Schema(features=[
    FeatureSpec(name="x", type="number"),
    FeatureSpec(name="n", type="integer", nullable=True),
    FeatureSpec(name="flag", type="boolean"),
    FeatureSpec(name="colour", type="category", categories=["red", "blue"]),
])


def test_dataframe_path_keeps_types():
    frame = RowValidator(SCHEMA, as_frame=True).validate(
        [{"x": 1, "n": None, "flag": True, "colour": "red"},
         {"x": 2.5, "n": 3.0, "flag": False, "colour": "blue"}])
    assert frame.columns.tolist() == ["x", "n", "flag", "colour"]
    assert frame["x"].tolist() == [1.0, 2.5]
    assert math.isnan(frame["n"][0]) and frame["n"][1] == 3.0
    assert frame["flag"].tolist() == [1.0, 0.0]
    assert frame["colour"].tolist() == ["red", "blue"]


def test_matrix_path_is_in_schema_order():
    schema = Schema(features=SCHEMA.features[:3])
    X = RowValidator(schema, as_frame=False).validate([{"flag": True, "n": 2, "x": 0.5}])
    assert X.dtype == np.float64
    assert X.tolist() == [[0.5, 2.0, 1.0]]


@pytest.mark.parametrize("field,value,message", [
    ("x", "1", "must be a number, got string '1'"),
    ("x", [1], "must be a number, got an array"),
    ("x", float("nan"), "must be a finite number"),
    ("n", 2.5, "must be an integer, got float 2.5"),
    ("flag", 1, "must be a boolean, got int 1"),
    ("colour", "green", "unknown category 'green'"),
    ("colour", 3, "must be a string category"),
    ("flag", None, "must not be null"),
    ("x", 10 ** 400, "must be a number, got an integer of 1329 bits"),
    ("n", -(10 ** 400), "must be a number, got an integer of 1329 bits"),
])
def test_bad_values_are_named(field, value, message):
    row = {"x": 1.0, "n": 1, "flag": True, "colour": "red", field: value}
    with pytest.raises(ValidationError) as exc:
        RowValidator(SCHEMA, as_frame=True).validate([row], single=True)
    [detail] = exc.value.details
    assert detail["field"] == field
    assert detail["message"].startswith(message)


def test_unknown_categories_allowed_when_the_model_takes_them():
    schema = Schema(features=[FeatureSpec(name="c", type="category", categories=["a"],
                                          allow_unknown=True)])
    frame = RowValidator(schema, as_frame=True).validate([{"c": "zzz"}])
    assert frame["c"].tolist() == ["zzz"]


def test_non_object_row():
    with pytest.raises(ValidationError) as exc:
        RowValidator(SCHEMA, as_frame=True).validate([{"x": 1, "n": 1, "flag": True,
                                                       "colour": "red"}, 5])
    assert exc.value.details == [{"row": 1, "message": "must be an object, got int 5"}]


NUMERIC = Schema(features=[FeatureSpec(name="a", type="number"),
                           FeatureSpec(name="b", type="integer"),
                           FeatureSpec(name="c", type="number")])


def test_plain_numeric_rows_take_the_fast_path_with_the_same_result():
    rng = np.random.default_rng(0)
    rows = [{"c": float(c), "a": int(a) if i % 3 else float(a), "b": int(b) if i % 2 else float(b)}
            for i, (a, b, c) in enumerate(zip(rng.normal(size=200) * 1e6,
                                              rng.integers(-2**40, 2**40, 200),
                                              rng.normal(size=200), strict=True))]
    rows.append({"a": 2**53 + 1, "b": 7, "c": -0.0})  # an int rounded as float(v) rounds it
    fast = RowValidator(NUMERIC, as_frame=False)
    assert fast._plain_matrix(rows) is not None
    slow = RowValidator(NUMERIC, as_frame=False)
    slow._plain = False
    expected = slow.validate(rows)
    got = fast.validate(rows)
    assert got.tobytes() == expected.tobytes() and got.flags.f_contiguous


@pytest.mark.parametrize("row,message", [
    ({"a": 1.0, "b": 2.5, "c": 0.0}, "must be an integer"),
    ({"a": float("inf"), "b": 1, "c": 0.0}, "must be a finite number"),
    ({"a": True, "b": 1, "c": 0.0}, "must be a number, got boolean true"),
    ({"a": 1.0, "b": 1, "c": 0.0, "d": 1}, "unknown feature"),
    ({"a": 1.0, "b": 1}, "missing feature"),
    ({"a": 1.0, "b": 10 ** 30, "c": 0.0}, None),  # fine: an integer-valued double
])
def test_the_fast_path_hands_bad_rows_to_the_checks(row, message):
    validator = RowValidator(NUMERIC, as_frame=False)
    if message is None:
        assert validator.validate([row]).tolist() == [[1.0, 1e30, 0.0]]
        return
    with pytest.raises(ValidationError) as exc:
        validator.validate([{"a": 0.0, "b": 0, "c": 0.0}, row])
    assert exc.value.details[0]["row"] == 1
    assert exc.value.details[0]["message"].startswith(message)


def _rows_of(values: list, width: int = 3) -> list[dict]:
    return [dict(zip(["a", "b", "c"], values[i:i + width], strict=True))
            for i in range(0, len(values), width)]


def test_plain_values_are_validates_matrix_bit_for_bit():
    rng = np.random.default_rng(1)
    values: list = []
    for i, (a, b, c) in enumerate(zip(rng.normal(size=50) * 1e6, rng.integers(-2**40, 2**40, 50),
                                      rng.normal(size=50), strict=True)):
        values += [int(a) if i % 3 else float(a), int(b) if i % 2 else float(b), float(c)]
    values += [2**53 + 1, 10**30, -0.0]  # ints rounded as float(v) rounds them
    validator = RowValidator(NUMERIC, as_frame=False)
    expected = validator.validate(_rows_of(values))
    for given in (values, np.asarray(values[:-3], dtype="<f8"),
                  np.asarray(values[:-3], dtype="<f4"), np.arange(-30, 30, dtype="<i8"),
                  np.arange(-30, 30, dtype="<i4")):
        n = len(given) // 3
        got = validator.plain_values(given, n)
        want = validator.validate(_rows_of(given.tolist() if isinstance(given, np.ndarray)
                                           else given))
        assert got is not None and got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes() and got.flags.f_contiguous
    assert validator.plain_values(values, len(values) // 3).tobytes() == expected.tobytes()


@pytest.mark.parametrize("values", [
    [1.0, 2.5, 0.0],                # not an integer where the schema says integer
    [float("nan"), 1, 0.0],         # not finite (the lenient JSON parser lets NaN through)
    [True, 1, 0.0],                 # a boolean is not a number
    [None, 1, 0.0],
    ["1", 1, 0.0],
    [1.0, 10**400, 0.0],            # beyond any double
    np.array([np.inf, 1.0, 0.0]),
    np.array([True, False, True]),  # BOOL tensors go to the checks
    [1.0, 1],                       # not n rows of the schema's width
])
def test_plain_values_hand_anything_else_to_validate(values):
    assert RowValidator(NUMERIC, as_frame=False).plain_values(values, 1) is None


def test_plain_values_only_for_a_plain_numeric_schema():
    assert RowValidator(SCHEMA, as_frame=False).plain_values([1.0, 1, 1.0, 1.0], 1) is None
    assert RowValidator(NUMERIC, as_frame=True).plain_values([1.0, 1, 1.0], 1) is None
