"""The job runner in process, against the real Redis fixture: submit, run whole, run in parts,
fail, cancel. No Celery worker consumes the queue here: the test calls what a worker's task
calls (shared.jobs.coordinator.run_job, shared.jobs.parts.run_part) itself."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from shared.jobs import paths
from shared.jobs.coordinator import run_job
from shared.jobs.lifecycle import cancel_or_delete
from shared.jobs.parts import run_part
from shared.jobs.record import JobStatus, Outcome
from shared.jobs.submit import parse_options, submit_job
from shared.services import Services


@pytest.fixture
def rt(base_settings, redis_client, tmp_path):
    # A queue of its own, so no worker process of another test takes these jobs' messages.
    settings = base_settings.with_overrides(data_dir=str(tmp_path / "data"),
                                            queue_name="inprocess", chunk_rows=100,
                                            part_rows=250)
    services = Services(settings)
    yield services
    services.redis.close()


@pytest.fixture(scope="module")
def frame(demo_data) -> pd.DataFrame:
    names, X = demo_data
    return pd.DataFrame(X, columns=names)


@pytest.fixture(scope="module")
def big_frame(demo_data) -> pd.DataFrame:
    """Rows enough for a CSV of several 1 MiB parts (the smallest part a CSV is cut into)."""
    names, X = demo_data
    return pd.DataFrame(np.tile(X, (18, 1)), columns=names)


def _submit(rt: Services, tmp_path, data: bytes, fmt: str, **options):
    staged = tmp_path / f"upload.{fmt}"
    staged.write_bytes(data)
    return submit_job(rt, staged, fmt, f"input.{fmt}", parse_options(options))


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _result(rt: Services, job_id: str) -> pd.DataFrame:
    job = rt.jobs.get(job_id)
    assert job.output is not None
    keys = job.output.get("parts") or [job.output["key"]]
    data = b"".join(rt.storage.path(k).read_bytes() for k in keys)
    if job.output["format"] == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pandas()
    return pd.read_csv(io.BytesIO(data))


def _expected(rt: Services, frame: pd.DataFrame) -> np.ndarray:
    model = rt.models.resolve(None, rt.settings.default_model).model
    return model.predict_proba(frame.to_numpy())[:, 1]


def test_a_job_runs_whole_in_process(rt, tmp_path, frame):
    job = _submit(rt, tmp_path, _csv(frame), "csv")
    assert rt.jobs.get(job.id).status is JobStatus.QUEUED
    outcome = run_job(rt, job.id, "inprocess")
    assert outcome.status is JobStatus.SUCCEEDED and outcome.rows == len(frame)
    done = rt.jobs.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempt == 1
    assert done.rows_done == len(frame) and done.parts_total == 0
    result = _result(rt, job.id)
    assert result["row"].tolist() == list(range(len(frame)))
    np.testing.assert_allclose(result["probability_1"], _expected(rt, frame), rtol=1e-6)
    assert run_job(rt, job.id, "late").status is JobStatus.SUCCEEDED  # final is final


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_job_runs_in_parts_in_process(rt, tmp_path, frame, big_frame, fmt):
    rt.jobs.worker_heartbeat("pretend", 2)  # two live pool processes: the job is split
    frame = big_frame if fmt == "csv" else frame
    data = _csv(frame) if fmt == "csv" else _parquet(frame, row_group_size=100)
    job = _submit(rt, tmp_path, data, fmt)
    assert run_job(rt, job.id, "coordinator").status is Outcome.SPLIT
    parts = rt.jobs.get(job.id).parts_total
    assert parts >= 2
    # A second delivery of the job's message is dropped: its parts are not sent twice.
    assert run_job(rt, job.id, "redelivered").status is Outcome.STALE
    assert rt.jobs.get(job.id).parts_total == parts
    # The parts in reverse order: the last one to finish joins them, in input order.
    outcomes = [run_part(rt, job.id, i, f"w{i}").status for i in reversed(range(parts))]
    assert outcomes == [Outcome.PART_DONE] * (parts - 1) + [JobStatus.SUCCEEDED]
    result = _result(rt, job.id)
    assert result["row"].tolist() == list(range(len(frame)))
    np.testing.assert_allclose(result["probability_1"], _expected(rt, frame), rtol=1e-6)
    assert run_job(rt, job.id, "late").status is JobStatus.SUCCEEDED


def test_a_bad_row_fails_the_job_with_its_place(rt, tmp_path, frame):
    text = frame.head(50).astype(object)
    text.loc[7, "mean area"] = "n/a"
    job = _submit(rt, tmp_path, _csv(text), "csv")
    assert run_job(rt, job.id, "inprocess").status is JobStatus.FAILED
    failed = rt.jobs.get(job.id)
    assert failed.error is not None
    assert (failed.error.code, failed.error.row, failed.error.field) == (
        "invalid_row", 7, "mean area")
    assert not rt.storage.exists(paths.result(job.id, "csv"))


def test_a_bad_row_in_one_part_fails_the_split_job_and_removes_the_parts(rt, tmp_path,
                                                                        big_frame):
    rt.jobs.worker_heartbeat("pretend", 2)
    text = big_frame.astype(object)
    text.loc[6000, "mean area"] = "n/a"
    job = _submit(rt, tmp_path, _csv(text), "csv")
    assert run_job(rt, job.id, "coordinator").status is Outcome.SPLIT
    statuses = {run_part(rt, job.id, i, f"w{i}").status
                for i in range(rt.jobs.get(job.id).parts_total)}
    assert JobStatus.FAILED in statuses
    failed = rt.jobs.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error.row == 6000
    assert not rt.storage.exists(paths.parts_dir(job.id))


def test_a_cancelled_job_never_runs_and_a_final_one_is_deleted(rt, tmp_path, frame):
    job = _submit(rt, tmp_path, _csv(frame.head(20)), "csv")
    cancelled = cancel_or_delete(rt, job.id)
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
    assert run_job(rt, job.id, "inprocess").status is JobStatus.CANCELLED
    assert cancel_or_delete(rt, job.id) is None
    assert not rt.jobs.exists(job.id)
    assert not rt.storage.exists(paths.job_dir(job.id))


def _parquet(frame: pd.DataFrame, row_group_size: int) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, row_group_size=row_group_size)
    return buf.getvalue()
