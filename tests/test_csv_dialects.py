"""CSV files as pandas, Python's csv module and Excel write them (quoted line breaks, commas
and quotes in cells, CRLF, a BOM, other delimiters and encodings, long rows, rows with the
wrong number of columns): scored through the real stack, every row matching the model's own
predict_proba, or refused at submit with a 4xx JSON message that says why."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest
import requests

from shared.jobs.outputs import defuse_formulas
from shared.models.loading import load_model
from shared.models.store import ModelStore
from tests.jobclient import read_result, submit, wait_job
from tests.test_job_parts import split_stack  # noqa: F401 - the fixture, used below

NOTES = ["plain", "comma, inside", 'say "hi", twice ""', "two\nlines", "crlf\r\nline",
         "ends with a break\n", "\n\nleading breaks", "café ü", ";semi;colons|and|pipes\t"]


def noted(customer_frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """n demo rows (repeated): a customer id, a note full of CSV's awkward characters, then
    the 30 features."""
    base = customer_frame.drop(columns="customer")
    df = pd.DataFrame(np.tile(base.to_numpy(), (n // len(base) + 1, 1))[:n],
                      columns=base.columns)
    df.insert(0, "customer", [f"c{i:05d}" for i in range(n)])
    df.insert(1, "note", [NOTES[i % len(NOTES)] for i in range(n)])
    return df


@pytest.fixture(scope="module")
def frame(customer_frame) -> pd.DataFrame:
    """3,000 rows: more than one of pyarrow's 1 MiB parse blocks."""
    return noted(customer_frame, 3000)


@pytest.fixture(scope="module")
def model(artifacts_dir):
    return load_model(ModelStore(artifacts_dir), "breast-cancer", 1)


def expected_proba(model, rows: pd.DataFrame) -> np.ndarray:
    names = [f.name for f in model.manifest.features]
    return model.model.predict_proba(rows[names])[:, 1]


def scored(api_server, data: bytes, **options) -> tuple[dict, pd.DataFrame]:
    """Submit, wait for success, and read the result (Parquet: exact floats)."""
    options.setdefault("output_format", "parquet")
    r = submit(api_server.url, data, "csv", **options)
    assert r.status_code == 202, r.text
    done = wait_job(api_server.url, r.json()["id"])
    assert done["status"] == "succeeded", done
    result, _ = read_result(api_server.url, done["id"])
    return done, result


def assert_rows_match(result: pd.DataFrame, rows: pd.DataFrame, model) -> None:
    assert result["customer"].tolist() == rows["customer"].tolist()
    np.testing.assert_array_equal(result["probability_1"].to_numpy(),
                                  expected_proba(model, rows))


def pandas_csv(df: pd.DataFrame, **kwargs) -> bytes:
    encoding = kwargs.pop("encoding", "utf-8")
    return df.to_csv(index=False, **kwargs).encode(encoding)


def csv_module(df: pd.DataFrame, **kwargs) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, **kwargs)
    writer.writerow(df.columns)
    writer.writerows(df.itertuples(index=False))  # floats as repr: they read back exactly
    return out.getvalue().encode()


WRITERS = {
    "pandas": lambda df: pandas_csv(df),
    "pandas crlf": lambda df: pandas_csv(df, lineterminator="\r\n"),
    "pandas quote all": lambda df: pandas_csv(df, quoting=csv.QUOTE_ALL),
    "pandas bom": lambda df: pandas_csv(df, encoding="utf-8-sig"),
    "pandas semicolons": lambda df: pandas_csv(df, sep=";"),
    "pandas tabs": lambda df: pandas_csv(df, sep="\t"),
    "pandas pipes": lambda df: pandas_csv(df, sep="|"),
    "csv module (excel, crlf)": lambda df: csv_module(df),
    "csv module quote all": lambda df: csv_module(df, quoting=csv.QUOTE_ALL),
    "csv module semicolons lf": lambda df: csv_module(df, delimiter=";", lineterminator="\n"),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_written_files_are_scored_row_for_row(api_server, worker, frame, model, writer):
    done, result = scored(api_server, WRITERS[writer](frame), id_column="customer",
                          include_input="true")
    assert done["progress"]["rows_done"] == len(frame)
    assert_rows_match(result, frame, model)
    assert result["note"].tolist() == frame["note"].tolist()  # cells intact, breaks and all


@pytest.mark.parametrize("delimiter,sep", [(";", ";"), ("semicolon", ";"), ("tab", "\t"),
                                           ("\t", "\t"), ("|", "|")])
def test_delimiter_option(api_server, worker, frame, model, delimiter, sep):
    _, result = scored(api_server, pandas_csv(frame, sep=sep), id_column="customer",
                       delimiter=delimiter)
    assert_rows_match(result, frame, model)


def test_wrong_delimiter_is_refused_with_a_hint(api_server, frame):
    r = submit(api_server.url, pandas_csv(frame, sep=";"), "csv", delimiter=",")
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "lacks 30 feature column(s)" in message
    assert "one column when split at commas" in message and "delimiter option" in message


def test_utf16_is_refused_saying_so(api_server, frame):
    r = submit(api_server.url, pandas_csv(frame.iloc[:5], sep="\t", encoding="utf-16"), "csv")
    assert r.status_code == 400, r.text
    assert "UTF-16" in r.json()["error"]["message"]


@pytest.mark.parametrize("options,field", [({"delimiter": "x"}, "delimiter"),
                                           ({"encoding": "utf-16"}, "encoding"),
                                           ({"encoding": "no-such-codec"}, "encoding")])
def test_bad_dialect_options_are_422(api_server, frame, options, field):
    r = submit(api_server.url, pandas_csv(frame), "csv", **options)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == field


def test_decimal_commas_are_refused_then_scored_with_the_decimal_option(api_server, worker,
                                                                       frame, model):
    data = pandas_csv(frame, sep=";", decimal=",")  # what Excel writes in much of Europe
    r = submit(api_server.url, data, "csv")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "column 'mean radius' holds '17,99'" in error["message"]
    assert "decimal=," in error["message"] and error["details"][0]["field"] == "mean radius"
    _, result = scored(api_server, data, decimal=",", id_column="customer")
    assert_rows_match(result, frame, model)
    bad = frame.iloc[:50].copy()
    bad["mean area"] = bad["mean area"].map(lambda v: f"{v:.3f}".replace(".", ","))
    bad.loc[7, "mean area"] = "lots"  # the chunk is read as text: commas still read
    bad_csv = pandas_csv(bad, sep=";", decimal=",")
    assert b";1001,000;" in bad_csv
    _, result = scored(api_server, bad_csv, decimal=",", on_error="skip")
    kept = frame.iloc[:50].drop(index=7).assign(**{"mean area": bad["mean area"].drop(
        index=7).str.replace(",", ".").astype(float)})
    assert result["row"].tolist() == [i for i in range(50) if i != 7]
    np.testing.assert_array_equal(result["probability_1"], expected_proba(model, kept))


def test_cp1252_file_is_refused_then_scored_with_its_encoding(api_server, worker, frame,
                                                               model):
    data = pandas_csv(frame, sep=";", encoding="cp1252")  # what Excel on Windows writes
    r = submit(api_server.url, data, "csv")
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "not UTF-8" in message and "encoding=cp1252" in message
    for encoding in ("cp1252", "windows-1252"):
        _, result = scored(api_server, data, encoding=encoding, include_input="true")
        assert_rows_match(result, frame, model)
        assert result["note"].tolist() == frame["note"].tolist()
    _, result = scored(api_server, pandas_csv(frame, encoding="latin-1"), encoding="latin-1",
                       include_input="true")
    assert result["note"].tolist() == frame["note"].tolist()


def test_four_megabyte_rows_are_scored(api_server, worker, frame, model):
    long = frame.iloc[:30].copy()
    long.loc[long.index[3], "note"] = "x" * (4 << 20)
    long.loc[long.index[20], "note"] = 'quoted, "long"\n' * (300 << 10)  # 4.5 MB, breaks in it
    _, result = scored(api_server, pandas_csv(long), id_column="customer",
                       output_format="csv")
    assert_rows_match(result, long, model)


def test_row_over_the_line_limit_fails_the_job_saying_so(api_server, worker, frame,
                                                         base_settings):
    long = frame.iloc[:10].copy()
    long.loc[long.index[4], "note"] = "y" * (base_settings.max_line_bytes + 10)
    r = submit(api_server.url, pandas_csv(long), "csv")
    assert r.status_code == 202, r.text
    done = wait_job(api_server.url, r.json()["id"])
    assert done["status"] == "failed"
    assert f"longer than the limit of {base_settings.max_line_bytes} bytes" in \
        done["error"]["message"]


def _with_wrong_widths(frame: pd.DataFrame) -> tuple[bytes, list[int]]:
    """The frame as CSV, with some rows given too few or too many cells (row numbers)."""
    lines = pandas_csv(frame.drop(columns="note")).decode().splitlines(keepends=True)
    bad = {5: "c9999,1.0\n", 17: lines[18].rstrip("\n") + ",extra\n", 60: "\n".join(
        ["c9998"] * 3) + "\n", 2500: "c9997\n"}
    # row 60 becomes three one-cell rows (60, 61, 62): the rows after are numbered on
    out, rows = [lines[0]], []
    for i, line in enumerate(lines[1:]):
        out.append(bad.get(i, line))
    for i in bad:
        rows += [i + 2 * (i > 60)] if i != 60 else [60, 61, 62]
    return "".join(out).encode(), sorted(rows)


def test_rows_with_the_wrong_column_count_are_skipped_by_number(api_server, worker, frame,
                                                                 model):
    data, bad_rows = _with_wrong_widths(frame)
    done, result = scored(api_server, data, on_error="skip", id_column="customer")
    total = len(frame) + 2  # row 60 became three rows
    assert done["progress"]["rows_done"] == total
    assert done["progress"]["rows_failed"] == len(bad_rows)
    errors = pd.read_csv(io.StringIO(requests.get(
        f"{api_server.url}/jobs/{done['id']}/errors", timeout=10).text))
    assert errors["row"].tolist() == bad_rows
    assert errors["message"].tolist()[:2] == ["expected 31 columns, got 2",
                                             "expected 31 columns, got 32"]
    kept = frame.drop(index=frame.index[[5, 17, 60, 2500]])
    assert_rows_match(result, kept, model)
    with_rows = scored(api_server, data, on_error="skip")[1]
    assert with_rows["row"].tolist() == [i for i in range(total) if i not in bad_rows]


def test_rows_with_the_wrong_column_count_fail_the_job_naming_the_row(api_server, worker,
                                                                      frame):
    data, _ = _with_wrong_widths(frame)
    r = submit(api_server.url, data, "csv")
    done = wait_job(api_server.url, r.json()["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_row"
    assert done["error"]["row"] == 5
    assert done["error"]["message"].startswith("row 5: expected 31 columns, got 2")


def test_formulas_in_column_names_and_blank_led_cells_are_defused(api_server, worker, frame):
    df = frame.iloc[:6].copy()
    df.insert(0, '=HYPERLINK("http://x")', [" =1+1", "\n@SUM(A1)", "\t-2", "ok", "+3", "a=b"])
    _, result = scored(api_server, pandas_csv(df), include_input="true", output_format="csv")
    assert "'=HYPERLINK(\"http://x\")" in result.columns
    assert "=HYPERLINK(\"http://x\")" not in result.columns
    assert result["'=HYPERLINK(\"http://x\")"].tolist() == [
        "' =1+1", "'\n@SUM(A1)", "'\t-2", "ok", "'+3", "a=b"]


def test_defuse_formulas_leaves_safe_text_alone():
    import pyarrow as pa

    table = pa.table({"-name": ["a", " b", "x=1", None], "n": [1, 2, 3, 4]})
    out = defuse_formulas(table)
    assert out.column_names == ["'-name", "n"]
    assert out.column(0).to_pylist() == ["a", " b", "x=1", None]


def test_many_chunks_with_quoted_line_breaks(api_server, worker, customer_frame, model):
    rows = noted(customer_frame, 45_000)  # three chunks of the worker's 20,000 rows
    done, result = scored(api_server, pandas_csv(rows), id_column="customer")
    assert done["progress"]["rows_done"] == len(rows)
    assert_rows_match(result, rows, model)


def test_stray_quotes_of_hand_written_files_are_text(api_server, worker, customer_frame,
                                                      model):
    rows = noted(customer_frame, 25_000)  # two chunks
    rows["note"] = [['12" pipe', "plain", '5"', 'say "hi"'][i % 4] for i in range(len(rows))]
    data = rows.to_csv(index=False, quoting=csv.QUOTE_NONE, quotechar="'").encode()
    assert b'\nc00000,12" pipe,' in data
    _, result = scored(api_server, data, id_column="customer", include_input="true")
    assert_rows_match(result, rows, model)
    assert result["note"].tolist() == rows["note"].tolist()


def test_split_job_over_quoted_line_breaks(split_stack, customer_frame, model):  # noqa: F811
    api, _, _ = split_stack
    n = 60_000
    rows = noted(customer_frame, n)
    r = submit(api.url, pandas_csv(rows), "csv", id_column="customer",
               output_format="parquet")
    assert r.status_code == 202, r.text
    done = wait_job(api.url, r.json()["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["parts"]["total"] >= 2
    result, _ = read_result(api.url, done["id"])
    assert result["prediction_id"].tolist()[-1] == f"{done['id']}.{n - 1}"
    assert_rows_match(result, rows, model)
