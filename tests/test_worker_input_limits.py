"""The limits and faults a worker meets while it reads a job's input, in process against the real
Redis fixture: rows per job (TABSERVE_MAX_JOB_ROWS) for a CSV file, whose rows are known only
as they are read, whole and in parts; a Parquet file's limits checked again where the worker
opens it; a row over TABSERVE_MAX_LINE_BYTES named by its number. Each fails the job once,
with a clear message, leaving no output behind."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from shared.jobs import paths
from shared.jobs.coordinator import run_job
from shared.jobs.parts import run_part
from shared.jobs.record import JobStatus, Outcome
from shared.jobs.submit import parse_options, submit_job
from shared.services import Services


@pytest.fixture
def make_rt(base_settings, redis_client, tmp_path):
    made: list[Services] = []

    def make(**changes) -> Services:
        settings = base_settings.with_overrides(
            data_dir=str(tmp_path / "data"), queue_name="rowlimit", chunk_rows=100,
            part_rows=250, **changes)
        made.append(Services(settings))
        return made[-1]
    yield make
    for services in made:
        services.redis.close()


@pytest.fixture(scope="module")
def frame(demo_data) -> pd.DataFrame:
    names, X = demo_data
    return pd.DataFrame(X, columns=names)


def _submit(rt: Services, tmp_path, data: bytes, fmt: str):
    staged = tmp_path / f"upload.{fmt}"
    staged.write_bytes(data)
    return submit_job(rt, staged, fmt, f"input.{fmt}", parse_options({}))


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _only_the_upload_is_left(rt: Services, job_id: str, fmt: str) -> None:
    # the input and the record's copy (shared.jobs.mirror); no result, errors or temporary file
    assert sorted(rt.storage.list_files(paths.job_dir(job_id))) == sorted(
        [paths.upload(job_id, fmt), paths.record(job_id)])


def test_a_csv_file_over_the_row_limit_fails_the_job_at_the_first_row_past_it(make_rt,
                                                                             tmp_path, frame):
    rt = make_rt(max_job_rows=250)
    job = _submit(rt, tmp_path, _csv(frame), "csv")  # 569 rows: a CSV's count is not known
    outcome = run_job(rt, job.id, "inprocess")
    assert outcome.status is JobStatus.FAILED
    failed = rt.jobs.get(job.id)
    assert failed.error is not None
    assert (failed.error.code, failed.error.row) == ("payload_too_large", 250)
    assert failed.error.message.startswith("row 250: the file has more than 250 rows")
    assert "TABSERVE_MAX_JOB_ROWS" in failed.error.message
    assert failed.attempt == 1 and failed.rows_done <= 200  # stopped, not read to the end
    _only_the_upload_is_left(rt, job.id, "csv")
    # A deterministic input error: a second delivery of its message does not run it again.
    assert run_job(rt, job.id, "redelivered").status is JobStatus.FAILED


def test_a_csv_file_of_exactly_the_limit_is_scored(make_rt, tmp_path, frame):
    rt = make_rt(max_job_rows=len(frame))
    job = _submit(rt, tmp_path, _csv(frame), "csv")
    assert run_job(rt, job.id, "inprocess").status is JobStatus.SUCCEEDED
    assert rt.jobs.get(job.id).rows_done == len(frame)


def test_the_row_limit_holds_across_the_parts_of_a_split_job(make_rt, tmp_path, demo_data):
    names, X = demo_data
    big = pd.DataFrame(np.tile(X, (18, 1)), columns=names)  # 10,242 rows, several parts
    rt = make_rt(max_job_rows=6000)
    rt.jobs.worker_heartbeat("pretend", 2)  # two live pool processes: the job is split
    job = _submit(rt, tmp_path, _csv(big), "csv")
    assert run_job(rt, job.id, "coordinator").status is Outcome.SPLIT
    parts = rt.jobs.get(job.id).parts_total
    assert parts >= 2
    statuses = [run_part(rt, job.id, i, f"w{i}").status for i in range(parts)]
    assert JobStatus.FAILED in statuses and JobStatus.SUCCEEDED not in statuses
    failed = rt.jobs.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error.row == 6000
    assert "TABSERVE_MAX_JOB_ROWS" in failed.error.message
    assert not rt.storage.exists(paths.parts_dir(job.id))
    _only_the_upload_is_left(rt, job.id, "csv")


@pytest.mark.parametrize("limit, words", [
    ({"max_job_rows": 100}, "569 rows, over the limit of 100 rows per job"),
    ({"max_parquet_row_group_bytes": 10_000}, "TABSERVE_MAX_PARQUET_ROW_GROUP_BYTES"),
])
def test_a_parquet_input_is_checked_again_where_the_worker_opens_it(make_rt, tmp_path, frame,
                                                                    limit, words):
    # Accepted under today's limits, then run by a worker with lower ones (the limits were
    # lowered, or the file at an input_url was replaced after its check).
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    job = _submit(make_rt(), tmp_path, buf.getvalue(), "parquet")
    rt = make_rt(**limit)
    assert run_job(rt, job.id, "inprocess").status is JobStatus.FAILED
    failed = rt.jobs.get(job.id)
    assert failed.error.code == "payload_too_large" and words in failed.error.message
    assert failed.rows_done == 0
    _only_the_upload_is_left(rt, job.id, "parquet")


@pytest.mark.parametrize("row", [0, 4, 430])
def test_a_row_over_the_line_limit_is_named_by_its_number(make_rt, tmp_path, frame, row):
    rt = make_rt(max_line_bytes=4096)
    text = frame.head(450).astype(object)
    text.loc[row, "mean area"] = "9" * 10_000
    job = _submit(rt, tmp_path, _csv(text), "csv")
    assert run_job(rt, job.id, "inprocess").status is JobStatus.FAILED
    failed = rt.jobs.get(job.id)
    assert failed.error.row == row, failed.error.message
    assert failed.error.message.startswith(f"row {row}: the CSV row starting at byte ")
    assert "longer than the limit of 4096 bytes (TABSERVE_MAX_LINE_BYTES)" in \
        failed.error.message
    _only_the_upload_is_left(rt, job.id, "csv")


def test_a_parquet_file_with_corrupt_pages_fails_the_job_naming_the_row(make_rt, tmp_path,
                                                                        frame):
    # The footer is intact, so the file passes submit; its pages are not.
    buf = io.BytesIO()
    pd.concat([frame] * 4).to_parquet(buf, index=False, row_group_size=500)
    data = bytearray(buf.getvalue())
    data[len(data) // 2: len(data) // 2 + 2000] = b"\xab" * 2000
    rt = make_rt()
    job = _submit(rt, tmp_path, bytes(data), "parquet")
    assert run_job(rt, job.id, "inprocess").status is JobStatus.FAILED
    failed = rt.jobs.get(job.id)
    assert failed.error.code == "validation_error", failed.error.message
    assert failed.error.row is not None and 0 < failed.error.row < 4 * len(frame)
    assert failed.error.message.startswith(f"row {failed.error.row}: the Parquet file cannot "
                                           "be read from here (corrupt or truncated)")
    _only_the_upload_is_left(rt, job.id, "parquet")


def test_a_csv_header_over_the_column_limit_is_refused_where_the_worker_opens_it(
        make_rt, tmp_path, frame):
    wide = pd.concat([frame.head(5), pd.DataFrame(0, index=frame.index[:5],
                                                  columns=[f"x{i}" for i in range(300)])],
                     axis=1)
    job = _submit(make_rt(), tmp_path, _csv(wide), "csv")
    rt = make_rt(max_input_columns=200)
    assert run_job(rt, job.id, "inprocess").status is JobStatus.FAILED
    failed = rt.jobs.get(job.id)
    assert failed.error.message == ("the CSV header has 330 columns, over the limit of 220 "
                                    "(TABSERVE_MAX_INPUT_COLUMNS)")
    _only_the_upload_is_left(rt, job.id, "csv")
