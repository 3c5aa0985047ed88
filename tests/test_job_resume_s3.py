"""CSV and JSON lines outputs, and the errors file, resume on S3 from segments: byte streams
cut into segment objects closed at checkpoints, adopted by the next attempt and laid end to
end at the range's end (shared.jobs.streams).

Two layers: the segmented stream and the byte join alone (headers, empty segments, a resumed
attempt's first segment, bounded memory); and real processes on a real SeaweedFS S3 server,
a pool child SIGKILLed mid-job with on_error=skip, checked by a ledger of rows and errors.
"""

from __future__ import annotations

import io
import re
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import redis
import requests

from shared.jobs import paths
from shared.jobs.checkpoint import Checkpoint
from shared.jobs.chunks import RowError
from shared.jobs.leftovers import dead_files
from shared.jobs.outputs import ErrorsWriter
from shared.jobs.store import JobStore
from shared.jobs.streams import SegmentedStream, StreamOutput, join_bytes
from shared.storage import MIN_PART_BYTES, PIECE_BYTES, LocalStorage
from tests.jobclient import read_result, submit, wait_job
from tests.jobstack import LEASE, _csv, _pool_children
from tests.servers import ApiServer, WorkerProcess, tabserve_env, wait_until
from tests.test_job_resume import _with_bad_rows
from tests.test_s3 import (  # noqa: F401 (the SeaweedFS fixtures)
    ACCESS_KEY,
    BUCKET,
    REGION,
    SECRET_KEY,
    bucket_storage,
    seaweed,
)

N = 40_000
SEGMENT = re.compile(r"\.s\d{5}\.[a-z]+$")


def _rows(start: int, n: int) -> pa.Table:
    return pa.table({"key": list(range(start, start + n)),
                     "name": [f"=c{i}" if i % 7 == 0 else f"c{i}" for i in range(start,
                                                                                 start + n)]})


# --- the segmented stream and the byte join ------------------------------------------------


def test_a_csv_output_in_segments_has_one_header_after_a_resume(tmp_path):
    storage = LocalStorage(tmp_path)
    first_key, key = paths.result("j", "csv"), paths.result("j", "csv", 2)
    with SegmentedStream(storage, first_key) as stream:
        out = StreamOutput(stream, "csv", header=True)
        assert out.cut() == [] and out.open_bytes is None  # nothing written: no segment
        out.write(_rows(0, 3))
        adopted = out.cut()
        out.write(_rows(3, 2))
        assert out.cut() == adopted + ["jobs/j/result.s00001.csv"]
        out.write(_rows(5, 4))  # past the checkpoint: never adopted
    # The next attempt adopts the two closed segments; its first own one has no header.
    with SegmentedStream(storage, key, out.segments) as stream:
        resumed = StreamOutput(stream, "csv", header=not out.segments, rows=5)
        resumed.write(_rows(5, 4))
        assert resumed.open_bytes is not None and resumed.open_bytes > 0
        resumed.write(_rows(9, 0))
        resumed.close()
    assert resumed.rows == 9 and resumed.segments == [*adopted, "jobs/j/result.s00001.csv",
                                                       "jobs/j/result.a2.s00002.csv"]
    text = (tmp_path / key).read_text()
    assert text.count("key") == 1  # one header line
    joined = pd.read_csv(io.StringIO(text))
    assert joined["key"].tolist() == list(range(9))
    assert joined["name"].iloc[7] == "'=c7"  # defused as a single writer does


def test_an_errors_file_in_segments_resumes_without_a_second_header(tmp_path):
    storage = LocalStorage(tmp_path)
    with SegmentedStream(storage, paths.errors("j")) as stream:
        errors = ErrorsWriter(stream.text(), header=not stream.segments)
        errors.write([RowError(3, "x", "not a number")])
        adopted = stream.cut()
        errors.write([])  # a chunk without errors: the open segment stays empty (none)
        assert stream.open_bytes is None and stream.cut() == adopted
    with SegmentedStream(storage, paths.errors("j", 2), adopted) as stream:
        errors = ErrorsWriter(stream.text(), header=not stream.segments)
        errors.write([RowError(9, "y", "missing, ünicode")])
        stream.join()
    joined = pd.read_csv(tmp_path / paths.errors("j", 2))
    assert joined["row"].tolist() == [3, 9] and joined["message"].iloc[1] == "missing, ünicode"


def test_a_failed_range_leaves_no_open_segment(tmp_path):
    storage = LocalStorage(tmp_path)
    with pytest.raises(RuntimeError), SegmentedStream(storage, "jobs/j/result.jsonl") as stream:
        out = StreamOutput(stream, "jsonl", header=False)
        out.write(_rows(0, 2))
        out.cut()
        out.write(_rows(2, 2))
        raise RuntimeError("the attempt fails")
    assert sorted(p.name for p in (tmp_path / "jobs/j").iterdir()) == ["result.s00000.jsonl"]


@pytest.mark.parametrize("drop_headers", [False, True])
def test_join_bytes_lays_files_end_to_end(tmp_path, drop_headers):
    storage = LocalStorage(tmp_path)
    sources = {"a.csv": b"h\n1\n2\n", "empty.csv": b"", "only-header.csv": b"h\n",
               "b.csv": b"h\n3\n"}
    for name, data in sources.items():
        (tmp_path / name).write_bytes(data)
    join_bytes(storage, list(sources), "joined.csv", drop_headers)
    expected = b"h\n1\n2\n3\n" if drop_headers else b"".join(sources.values())
    assert (tmp_path / "joined.csv").read_bytes() == expected


def test_join_bytes_streams_in_pieces(tmp_path):
    storage = LocalStorage(tmp_path)
    size = 6 * PIECE_BYTES + 17
    for name in ("a", "b"):
        with open(tmp_path / name, "wb") as fh:
            for _ in range(size // 4096 + 1):
                fh.write(bytes([ord(name)]) * 4096)
    tracemalloc.start()
    try:
        join_bytes(storage, ["a", "b"], "ab")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (tmp_path / "ab").stat().st_size == 2 * (size // 4096 + 1) * 4096
    assert peak < 3 * PIECE_BYTES, peak  # a piece or two, never a whole file


@pytest.mark.parametrize("sizes,copied", [
    ((MIN_PART_BYTES + 1, MIN_PART_BYTES, 100), True),  # each but the last a whole S3 part
    ((MIN_PART_BYTES + 1,), True),
    ((100,), True),  # one part: the last may be small
    ((MIN_PART_BYTES + 1, 100, MIN_PART_BYTES), False),  # a small one inside: streamed
])
def test_segments_of_5_mib_are_joined_by_copies_inside_the_bucket(bucket_storage,  # noqa: F811
                                                                  sizes, copied):
    keys, expected = [], b""
    for i, size in enumerate(sizes):
        data = bytes([65 + i]) * size
        keys.append(paths.segment("jobs/j/result.csv", i))
        with bucket_storage.writer(keys[-1]) as fh:
            fh.write(data)
        expected += data
    assert bucket_storage.join_copies(keys, "jobs/j/copied.csv") is copied
    join_bytes(bucket_storage, keys, "jobs/j/result.csv")
    with bucket_storage.open("jobs/j/result.csv") as fh:
        assert fh.read() == expected
    if copied:
        with bucket_storage.open("jobs/j/copied.csv") as fh:
            assert fh.read() == expected
    else:
        assert not bucket_storage.exists("jobs/j/copied.csv")
    assert not LocalStorage("/nonexistent").join_copies(keys, "x")  # a directory streams


def test_segments_of_errors_files_are_attempt_files():
    part_errors = paths.segment(paths.part_errors("j", 3, 2), 4)
    assert part_errors == "jobs/j/parts/00003.a2.errors.s00004.csv"
    assert paths.attempt_of(part_errors) == (3, 2) and paths.is_segment(part_errors)
    assert paths.attempt_of(paths.segment(paths.errors("j"), 0)) == (None, 1)
    assert paths.attempt_of(paths.part_errors("j", 3, 2)) == (3, 2)


# --- real processes: a pool child SIGKILLed mid-job on S3 ----------------------------------


@pytest.fixture(scope="module")
def s3_settings(base_settings, redis_server, seaweed, tmp_path_factory):  # noqa: F811
    # Own Redis database and queue, so no other module's worker takes these jobs; a segment
    # (and a checkpoint) per chunk.
    return base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/15", queue_name="resume-s3",
        data_dir=f"s3://{BUCKET}/resume", s3_endpoint_url=seaweed.endpoint,
        staging_dir=str(tmp_path_factory.mktemp("s3-staging")), job_lease_seconds=LEASE,
        chunk_rows=2000, part_rows=0, worker_threads=1, segment_bytes=0,
        worker_metrics_port=0)


@pytest.fixture(scope="module")
def s3_stack(s3_settings, tmp_path_factory):
    redis.Redis.from_url(s3_settings.redis_url).flushdb()
    env = tabserve_env(s3_settings.as_env(), {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"})
    logs = tmp_path_factory.mktemp("resume-s3-logs")
    api = ApiServer(env, logs, workers=1)
    try:
        worker = WorkerProcess(env, logs, "s3w")
    except BaseException:
        api.stop()
        raise
    yield api, worker, JobStore(redis.Redis.from_url(s3_settings.redis_url), 60)
    worker.stop()
    api.stop()


def _bucket_files(fs, job_id: str) -> list[str]:
    root = f"{BUCKET}/resume/"
    return sorted(p[len(root):] for p in fs.find(f"{root}jobs/{job_id}"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_pool_child_sigkilled_mid_job_resumes_on_s3(s3_stack, seaweed, demo_data,  # noqa: F811
                                                    fmt):
    api, worker, jobs = s3_stack
    data, bad = _with_bad_rows(_csv(demo_data, N), 997)
    job_id = submit(api.url, data, "csv", id_column="key", on_error="skip",
                    output_format=fmt).json()["id"]

    def checkpoint() -> Checkpoint:
        return Checkpoint.from_raw(jobs.get(job_id).checkpoint) or Checkpoint(0, 0, 0, 0, "")

    wait_until(lambda: len(checkpoint().segments or []) >= 5, 60, "five closed segments")
    for child in _pool_children(worker):
        child.kill()
    at_kill = checkpoint()
    assert at_kill.errors_segments and at_kill.output == "" and at_kill.errors is None
    lost_at = time.time()
    done = wait_job(api.url, job_id, timeout=LEASE + 60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2 and done["retry"]["reason"] == "worker lost", done
    assert pd.Timestamp(done["finished_at"]).timestamp() - lost_at < LEASE + 30
    resumed = jobs.get(job_id).rows_resumed
    assert resumed >= at_kill.rows > 0, (resumed, at_kill.rows)
    said = re.search(rf"job {job_id}: attempt 2 resumes after row (\d+) .*?; (\d+) rows "
                     r"scored again", Path(worker.log_path).read_text())
    assert said is not None and int(said[1]) == resumed and int(said[2]) < N

    result, _ = read_result(api.url, job_id)
    assert result["key"].astype(int).tolist() == sorted(set(range(N)) - set(bad))
    errors = requests.get(f"{api.url}/jobs/{job_id}/errors", timeout=60)
    assert errors.status_code == 200 and errors.text.count("row,field,message") == 1
    assert pd.read_csv(io.StringIO(errors.text))["row"].tolist() == bad

    # The adopted segments and attempt 2's are deleted by the attempt that finished, just
    # after the job became "succeeded" (so the wait); a segment the killed attempt closed
    # past its checkpoint (if the kill fell just there) is the sweep's.
    record = jobs.get(job_id)
    adopted = set(at_kill.segments or []) | set(at_kill.errors_segments or [])

    def listed() -> tuple[list[str], list[str]]:
        seaweed.fs.invalidate_cache()
        files = _bucket_files(seaweed.fs, job_id)
        return files, [f for f in files if SEGMENT.search(f)]

    def only_dead_segments_left() -> bool:
        files, left = listed()
        return not set(left) & adopted and \
            set(left) <= set(dead_files(record, files, [], time.time(), 3600))

    wait_until(only_dead_segments_left, 30, "the finished attempt to delete its segments")
    files, left = listed()
    assert {f"jobs/{job_id}/result.a{record.attempt}.{fmt}",
            f"jobs/{job_id}/errors.a{record.attempt}.csv"} <= set(files)
