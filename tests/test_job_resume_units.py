"""Checkpoints without services: what a resumed attempt adopts, and what the sweep keeps."""

from __future__ import annotations

import io
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shared.jobs.checkpoint import (
    Checkpoint,
    can_checkpoint,
    errors_in_segments,
    usable,
    writes_segments,
)
from shared.jobs.inputs import iter_chunks, resumed_range, whole_range
from shared.jobs.leftovers import dead_files
from shared.jobs.record import JobStatus, new_job
from shared.jobs.store import PartAttempt
from shared.storage import LocalStorage, ObjectStorage

TMP = "0123456789abcdef0123456789abcdef"


def _job(status: JobStatus, attempt: int, **fields):
    job = new_job("j", {"name": "m", "version": 1}, {"output_format": "csv"},
                  {"key": "jobs/j/input.csv", "format": "csv"}, None, 0)
    job.status, job.attempt = status, attempt
    for name, value in fields.items():
        setattr(job, name, value)
    return job


def _checkpoint(output: str, errors: str | None = None) -> Checkpoint:
    return Checkpoint(1, 4000, 2, 123_456, output, 9_000, errors, 40 if errors else 0)


def test_the_sweep_keeps_the_files_a_checkpoint_names_while_the_job_waits():
    output, errors = f"jobs/j/.result.csv.{TMP}.part", f"jobs/j/.errors.csv.{TMP}.part"
    lost = f"jobs/j/.result.a2.csv.{TMP}.part"  # attempt 2 died before its first checkpoint
    job = _job(JobStatus.QUEUED, 2, checkpoint=asdict(_checkpoint(output, errors)))
    files = ["jobs/j/input.csv", output, errors, lost]
    assert dead_files(job, files, [], time.time(), 3600) == [lost]
    finished = _job(JobStatus.SUCCEEDED, 3, checkpoint=asdict(_checkpoint(output, errors)),
                    output={"key": "jobs/j/result.a3.csv"})
    assert dead_files(finished, files, [], time.time(), 3600) == files[1:]


def test_the_sweep_keeps_a_parts_checkpointed_file_until_the_part_is_done():
    job = _job(JobStatus.RUNNING, 1, parts_total=2, parts_dispatched=True)
    first, second = (f"jobs/j/parts/.0000{i}.csv.{TMP}.part" for i in (0, 1))
    parts = [PartAttempt(1, False, None, asdict(_checkpoint(first))),  # lost, waits
             PartAttempt(2, False, {"output": "jobs/j/parts/00001.a2.csv"},
                         asdict(_checkpoint(second)))]  # done by attempt 2
    files = [first, second, "jobs/j/parts/00001.a2.csv"]
    assert dead_files(job, files, parts, time.time(), 3600) == [second]


def test_a_resumed_writer_starts_with_a_copy_of_the_checkpointed_bytes(tmp_path):
    storage = LocalStorage(tmp_path)
    with pytest.raises(RuntimeError), storage.writer("jobs/j/result.csv") as old:
        old.write(b"header\nrow 1\nrow 2\n")
        length = storage.sync(old)
        partial = storage.partial_key("jobs/j/result.csv", old)
        old.write(b"row 3 half-wri")  # past the checkpoint: a chunk the attempt never finished
        old.flush()
        with storage.writer("jobs/j/result.a2.csv", "wb", (partial, length)) as new:
            old.write(b"tten by a zombie\n")  # into its own file, never the new one
            old.flush()
            new.write(b"row 3\n")
        raise RuntimeError("the first attempt dies")
    assert (tmp_path / "jobs/j/result.a2.csv").read_bytes() == b"header\nrow 1\nrow 2\nrow 3\n"


def test_a_checkpoint_is_used_only_while_its_files_hold_its_bytes(tmp_path):
    storage = LocalStorage(tmp_path)
    (tmp_path / "jobs/j").mkdir(parents=True)
    (tmp_path / "jobs/j/out.part").write_bytes(b"x" * 9_000)
    kept = _checkpoint("jobs/j/out.part")
    assert usable(kept, storage, "csv", skip=False) == kept
    assert usable(kept, storage, "csv", skip=True) is None  # its errors file is not there
    (tmp_path / "jobs/j/out.part").write_bytes(b"x" * 100)
    assert usable(kept, storage, "csv", skip=False) is None
    assert usable(_checkpoint("jobs/j/gone.part"), storage, "csv", skip=False) is None
    assert Checkpoint.from_raw('{"rows": 3}') is None  # another shape: start over
    assert Checkpoint.from_raw(kept.to_json()) == kept


def test_which_jobs_are_checkpointed_and_which_files_go_in_segments(tmp_path):
    assert all(can_checkpoint(i, o) for i in ("csv", "parquet")
               for o in ("csv", "jsonl", "parquet"))
    local = LocalStorage(tmp_path)
    # Local storage appends to CSV and JSON lines outputs and to the errors file; a Parquet
    # output is in segments. On S3 (no appending) every file is in segments.
    assert not writes_segments(local, True, "csv") and not writes_segments(local, True, "jsonl")
    assert writes_segments(local, True, "parquet") and not errors_in_segments(local, True)
    bucket = ObjectStorage("s3://bucket/data", fs=object(), staging_dir=tmp_path)
    assert all(writes_segments(bucket, True, fmt) for fmt in ("csv", "jsonl", "parquet"))
    assert errors_in_segments(bucket, True)
    assert not writes_segments(bucket, False, "csv") and not errors_in_segments(bucket, False)


def test_a_checkpoint_of_another_shape_is_not_used(tmp_path):
    storage = LocalStorage(tmp_path)
    (tmp_path / "jobs/j").mkdir(parents=True)
    for name in ("out.part", "err.part", "result.s00000.csv", "errors.s00000.csv"):
        (tmp_path / "jobs/j" / name).write_bytes(b"x" * 9_000)
    appended = _checkpoint("jobs/j/out.part", "jobs/j/err.part")
    in_segments = Checkpoint(1, 4000, 2, 123_456, "", 0, None, 0,
                             segments=["jobs/j/result.s00000.csv"],
                             errors_segments=["jobs/j/errors.s00000.csv"])
    assert usable(appended, storage, "csv", skip=True) == appended
    assert usable(in_segments, storage, "csv", skip=True) is None  # local appends
    assert usable(appended, storage, "parquet", skip=True) is None  # Parquet is in segments
    assert in_segments.files() == {"jobs/j/result.s00000.csv", "jobs/j/errors.s00000.csv"}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_resumed_range_reads_the_rows_after_the_checkpoint_numbered_as_before(fmt):
    n = 40_000  # CSV blocks are at least 64 KB: several chunks
    frame = pd.DataFrame({"key": np.arange(n), "x": np.arange(n) * 0.5})
    buf = io.BytesIO()
    if fmt == "csv":
        frame.to_csv(buf, index=False)
    else:  # row groups of 1,500 rows, chunks of 640: the checkpoint falls inside a group
        frame.to_parquet(buf, index=False, row_group_size=1_500)
    types = {"key": pa.float64(), "x": pa.float64()}

    def read(part=None):
        buf.seek(0)
        return list(iter_chunks(buf, fmt, types, ["key", "x"], 640, part))

    chunks = read()
    done = chunks[4]  # the checkpoint: after the fifth chunk
    assert len(chunks) > 5
    rows_done = done.start_row + done.span
    part = resumed_range(buf, fmt, whole_range(buf, fmt), rows_done, done.bytes_done)
    rest = read(part)
    keys = [k for c in rest for k in c.table.column("key").to_pylist()]
    assert keys == list(range(rows_done, n))
    assert rest[0].start_row == rows_done
