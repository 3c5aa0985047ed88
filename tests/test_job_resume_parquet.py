"""A Parquet output resumes from a checkpoint: written in segments, each closed at a checkpoint,
adopted by the next attempt and joined by their bytes (shared.jobs.segments, parquetjoin);
here TABSERVE_SEGMENT_BYTES=0, a segment per chunk.

Three layers: the byte join alone; the job runner in process, with the first attempt paused
at a checkpoint and superseded there (the zombie case, exactly); and real processes, a pool
child SIGKILLed mid-job (whole, and one part of a split job). Each checks the ledger: every
input row once, in order, in a Parquet result readable row group by row group.
"""

from __future__ import annotations

import io
import re
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from prometheus_client import REGISTRY

from shared import keys
from shared.jobs import paths
from shared.jobs.checkpoint import Checkpoint
from shared.jobs.coordinator import run_job
from shared.jobs.leftovers import dead_files
from shared.jobs.parquetjoin import CannotJoinError, join_files
from shared.jobs.record import JobError, JobStatus
from shared.jobs.segments import SegmentedOutput, join_parquet
from shared.jobs.submit import parse_options, submit_job
from shared.services import Services
from shared.storage import LocalStorage, ObjectStorage
from tests.jobclient import file_bytes, read_result, submit, wait_job
from tests.jobstack import LEASE, Stack, _csv, _pool_children
from tests.servers import ApiServer, tabserve_env, wait_until
from tests.test_s3 import BUCKET, seaweed  # noqa: F401 (the SeaweedFS fixture)

N = 60_000


def _parquet(table: pa.Table, **options) -> bytes:
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, table.schema, compression="snappy", **options) as writer:
        writer.write_table(table)
    return buf.getvalue()


def _table(n: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(start)
    ids = pa.array([None if i % 17 == 0 else f"c{i}" for i in range(start, start + n)],
                   type=pa.string())
    return pa.table({"key": pa.array(np.arange(start, start + n)), "id": ids,
                     "prediction": pa.array(rng.integers(0, 2, n)),
                     "probability_1": pa.array(rng.random(n))})


# --- the byte join ------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"write_page_index": True},
                                     {"use_dictionary": False, "write_statistics": False}])
def test_parquet_files_join_by_their_bytes_into_one_file(options):
    tables = [_table(n, start) for n, start in ((1000, 0), (1, 1000), (0, 1001), (2500, 1001))]
    files = [_parquet(t, **options) for t in tables]
    out = io.BytesIO()
    rows = join_files([lambda f=f: io.BytesIO(f) for f in files], out)
    joined = pq.ParquetFile(io.BytesIO(out.getvalue()))
    expected = pa.concat_tables(tables)
    assert rows == joined.metadata.num_rows == expected.num_rows
    assert joined.read().equals(expected)
    # Every row group is where its footer says (offsets moved), statistics kept.
    groups = [g for t in tables for g in ([t] if t.num_rows else [])]
    assert joined.metadata.num_row_groups == sum(
        pq.ParquetFile(io.BytesIO(f)).metadata.num_row_groups for f in files)
    nonempty = [i for i in range(joined.metadata.num_row_groups)
                if joined.metadata.row_group(i).num_rows]
    for i, table in zip(nonempty, groups, strict=True):
        assert joined.read_row_group(i).equals(table)
    if options.get("write_statistics", True):
        stats = joined.metadata.row_group(nonempty[-1]).column(0).statistics
        assert (stats.min, stats.max) == (1001, 3500)


def test_files_whose_schemas_differ_are_joined_by_decoding(tmp_path):
    storage = LocalStorage(tmp_path)
    first = _table(10)
    second = _table(5, 10).cast(pa.schema([f.with_type(pa.float64()) if f.name == "key" else f
                                           for f in first.schema]))
    for key, table in (("a.parquet", first), ("b.parquet", second)):
        (tmp_path / key).write_bytes(_parquet(table))
    with pytest.raises(CannotJoinError):
        join_files([lambda: storage.open("a.parquet"), lambda: storage.open("b.parquet")],
                   io.BytesIO())
    join_parquet(storage, ["a.parquet", "b.parquet"], "joined.parquet")
    joined = pq.read_table(tmp_path / "joined.parquet")
    assert joined.schema == first.schema  # cast to the first file's
    assert joined.column("key").to_pylist() == list(range(15))


def test_a_segment_is_closed_at_a_chunks_end_once_it_holds_enough_bytes(tmp_path):
    storage = LocalStorage(tmp_path)
    with SegmentedOutput(storage, "jobs/j/result.parquet") as out:
        assert out.cut_past(0) is None  # nothing open
        out.write(_table(10))
        assert out.cut_past(1 << 20) is None  # kept open: no checkpoint at this chunk
        out.write(_table(10, 10))
        assert out.cut_past(1) == ["jobs/j/result.s00000.parquet"]
        out.close()
    assert pq.ParquetFile(tmp_path / "jobs/j/result.parquet").metadata.num_row_groups == 2


def test_a_segmented_output_joins_the_adopted_segments_then_its_own(tmp_path):
    storage = LocalStorage(tmp_path)
    key = "jobs/j/result.a2.parquet"
    earlier = paths.segment(paths.result("j", "parquet"), 0)
    (tmp_path / earlier).parent.mkdir(parents=True)
    (tmp_path / earlier).write_bytes(_parquet(_table(100)))
    with SegmentedOutput(storage, key, [earlier], rows=100) as out:
        out.write(_table(50, 100))
        assert out.cut() == [earlier, "jobs/j/result.a2.s00001.parquet"]
        out.write(_table(50, 150))
        with pytest.raises(RuntimeError), SegmentedOutput(storage, "jobs/j/x.parquet") as bad:
            bad.write(_table(5))
            raise RuntimeError("a failed range")
        out.close()
    assert out.rows == 200
    assert pq.read_table(tmp_path / key).column("key").to_pylist() == list(range(200))
    assert sorted(p.name for p in (tmp_path / "jobs/j").iterdir()) == [
        "result.a2.parquet", "result.a2.s00001.parquet", "result.a2.s00002.parquet",
        "result.s00000.parquet"]  # the failed range left no file (not even a temporary)


def test_segments_are_attempt_files_kept_while_a_checkpoint_names_them():
    from tests.test_job_resume_units import _job  # a job record as a test builds it

    seg = [paths.segment(paths.result("j", "parquet"), i) for i in range(3)]
    zombie = paths.segment(paths.result("j", "parquet"), 3)  # past the checkpoint
    assert [paths.attempt_of(k) for k in seg] == [(None, 1)] * 3
    assert paths.attempt_of(paths.segment(paths.part_result("j", 4, "parquet", 2), 7)) == (4, 2)
    checkpoint = Checkpoint(2, 3000, 0, 0, "", 0, segments=seg)
    assert checkpoint.files() == set(seg)
    waiting = _job(JobStatus.QUEUED, 1, checkpoint=asdict(checkpoint))
    assert dead_files(waiting, [*seg, zombie], [], time.time(), 3600) == [zombie]


# --- in process: an attempt superseded at a checkpoint -------------------------------------


@pytest.fixture
def rt(base_settings, tmp_path):
    settings = base_settings.with_overrides(
        redis_url=base_settings.redis_url.rsplit("/", 1)[0] + "/14", queue_name="segments",
        data_dir=str(tmp_path / "data"), chunk_rows=300, part_rows=0, segment_bytes=0)
    services = Services(settings)
    services.redis.flushdb()
    yield services
    services.redis.flushdb()
    services.redis.close()


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"kind": "job"}) or 0.0


@pytest.mark.parametrize("store,on_error", [("local", "fail"), ("local", "skip"),
                                            ("s3", "fail"), ("s3", "skip")])
def test_a_superseded_attempts_segments_are_adopted_up_to_its_checkpoint(
        rt, tmp_path, demo_data, monkeypatch, request, store, on_error):
    if store == "s3":  # a real SeaweedFS S3 gateway: segments are whole objects there
        fs = request.getfixturevalue("seaweed").fs
        rt.storage = ObjectStorage(f"s3://{BUCKET}/resume-{tmp_path.name}", fs=fs,
                                   staging_dir=tmp_path / "staging")
    storage = rt.storage
    names, X = demo_data
    n = 6_000
    frame = pd.DataFrame(np.tile(X, (n // len(X) + 1, 1))[:n], columns=names)
    frame.insert(0, "key", np.arange(n))
    bad = list(range(150, n, 1000)) if on_error == "skip" else []
    if bad:
        frame[names[0]] = frame[names[0]].astype(object)
        frame.loc[bad, names[0]] = "oops"
    staged = tmp_path / "upload.csv"
    frame.to_csv(staged, index=False)
    job = submit_job(rt, staged, "csv", "input.csv", parse_options(
        {"id_column": "key", "output_format": "parquet", "on_error": on_error}))

    # Attempt 1 pauses after closing its fifth segment, before that checkpoint is written;
    # meanwhile its lease is taken and the job re-queued, as the reaper does for a dead one.
    paused, go = threading.Event(), threading.Event()
    cut = SegmentedOutput.cut

    def cut_and_pause(self):
        closed = cut(self)
        if len(closed) == 5 and not go.is_set():
            paused.set()
            go.wait(30)
        return closed

    monkeypatch.setattr(SegmentedOutput, "cut", cut_and_pause)
    first = threading.Thread(target=run_job, args=(rt, job.id, "w1", 1))
    first.start()
    assert paused.wait(30)
    rt.redis.delete(keys.job_lease(job.id))
    assert rt.jobs.requeue(job.id, 1, 3, "worker lost",
                           JobError("worker_lost", "lost")) is JobStatus.QUEUED
    go.set()
    first.join(30)
    waiting = rt.jobs.get(job.id)
    checkpoint = Checkpoint.from_raw(waiting.checkpoint)
    assert checkpoint is not None and len(checkpoint.segments or []) == 4
    zombie = paths.segment(paths.result(job.id, "parquet"), 4)  # closed past the checkpoint
    assert storage.exists(zombie)

    resumed, rescored = _metric("tabserve_job_rows_resumed_total"), \
        _metric("tabserve_job_rows_rescored_total")
    assert run_job(rt, job.id, "w2", 2).status is JobStatus.SUCCEEDED
    done = rt.jobs.get(job.id)
    assert done.rows_resumed == checkpoint.rows > 0
    assert _metric("tabserve_job_rows_resumed_total") - resumed == checkpoint.rows
    assert _metric("tabserve_job_rows_rescored_total") - rescored == 0
    with storage.open(done.output["key"]) as fh:
        result = pq.ParquetFile(fh)
        keys_read = result.read().column("key").to_pylist()
        groups = [result.metadata.row_group(i).num_rows
                  for i in range(result.metadata.num_row_groups)]
    assert keys_read == [str(k) for k in range(n) if k not in bad]
    # One row group per chunk, as one writer makes: the first four are the adopted ones.
    assert len(groups) > 4 and sum(groups[:4]) == checkpoint.rows - checkpoint.rows_failed
    if bad:
        with storage.open(done.errors_key) as fh:
            assert pd.read_csv(fh)["row"].tolist() == bad
    # The adopted segments and attempt 2's are gone; the zombie's is left to the sweep (on
    # S3 its errors file is in segments too: the one it closed past the checkpoint, if any).
    left = storage.list_files(paths.job_dir(job.id))
    zombies = [f for f in left if re.search(r"\.s\d{5}\.", f)]
    assert zombie in zombies and set(zombies) <= {
        zombie, paths.segment(paths.errors(job.id), len(checkpoint.errors_segments or []))}
    dead = dead_files(done, left, [], time.time(), 3600)
    assert set(zombies) <= set(dead) and all(f in zombies or f.endswith(".part")
                                             for f in dead), dead


# --- real processes: a pool child SIGKILLed mid-job ----------------------------------------


@pytest.fixture(scope="module")
def module_settings(base_settings, redis_server, tmp_path_factory):
    # Own Redis database and queue, so no other module's worker takes these jobs.
    return base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/13", queue_name="resume-parquet",
        job_lease_seconds=LEASE, chunk_rows=2000, part_rows=0, worker_threads=1,
        segment_bytes=0, data_dir=str(tmp_path_factory.mktemp("resume-parquet") / "data"))


@pytest.fixture(scope="module")
def api(module_settings, tmp_path_factory):
    server = ApiServer(tabserve_env(module_settings.as_env()),
                       tmp_path_factory.mktemp("api"), workers=1)
    yield server
    server.stop()


@pytest.fixture
def stack(module_settings, api, tmp_path):
    client = redis.Redis.from_url(module_settings.redis_url)
    client.flushdb()
    client.close()
    shutil.rmtree(Path(module_settings.data_dir) / "jobs", ignore_errors=True)
    made: list[Stack] = []

    def make(**overrides) -> Stack:
        made.append(Stack(module_settings.with_overrides(**overrides), tmp_path, api))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def _ledger(s: Stack, job_id: str, expected: list[int], adopted: set[str]) -> None:
    """The result holds each row once, in order; the segments the finishing attempt wrote
    or adopted (`adopted`: the names in the killed attempt's last checkpoint) are gone."""
    result, response = read_result(s.api.url, job_id)
    assert response.headers["Content-Type"] == "application/vnd.apache.parquet"
    assert result["key"].astype(int).tolist() == expected  # each row once, in order
    # The killed attempt's unfinished segment (a temporary file) and one it closed after its
    # last checkpoint, if the kill fell between the two, are adopted by no attempt: they are
    # left to the sweep (shared.jobs.leftovers; test_a_superseded_attempts_segments_...).
    assert adopted

    def left() -> list[str]:
        return [f for f in s.job_files(job_id) if re.search(r"\.s\d{5}\.parquet$", f)
                and (Path(f).name in adopted or ".a" in Path(f).name)]

    wait_until(lambda: not left(), 10, "segments removed")


@pytest.mark.parametrize("in_fmt", ["csv", "parquet"])
def test_pool_child_sigkilled_mid_job_resumes_its_parquet_output(stack, demo_data, in_fmt):
    data, n = _csv(demo_data, N), N
    if in_fmt == "parquet":  # row groups that chunks do not line up with
        data = file_bytes(pd.read_csv(io.BytesIO(data)), "parquet", row_group_size=7_000)
    s = stack(chunk_rows=500 if in_fmt == "parquet" else 2000)
    worker = s.worker("w1")
    job_id = submit(s.api.url, data, in_fmt, id_column="key",
                    output_format="parquet").json()["id"]
    def checkpoint() -> Checkpoint:
        return Checkpoint.from_raw(s.record(job_id).checkpoint) or Checkpoint(0, 0, 0, 0, "")

    wait_until(lambda: len(checkpoint().segments or []) >= 5, 60, "five closed segments")
    for child in _pool_children(worker):
        child.kill()
    at_kill = checkpoint().rows
    adopted = {Path(key).name for key in checkpoint().segments or []}
    lost_at = time.time()
    done = wait_job(s.api.url, job_id, timeout=LEASE + 60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2 and done["retry"]["reason"] == "worker lost", done
    assert pd.Timestamp(done["finished_at"]).timestamp() - lost_at < LEASE + 30
    resumed = s.record(job_id).rows_resumed
    assert resumed >= at_kill > 0, (resumed, at_kill)
    assert s.logged(f"job {job_id}: attempt 2 resumes after row ") == 1
    assert s.logged(": attempt 2 starts from the first row") == 0
    said = re.search(rf"job {job_id}: attempt 2 resumes after row (\d+) .*?; (\d+) rows "
                     r"scored again", Path(worker.log_path).read_text())
    assert said is not None and int(said[1]) > 0 and int(said[2]) < n
    _ledger(s, job_id, list(range(n)), adopted)


def test_a_killed_part_resumes_its_parquet_output(stack, demo_data):
    n = 2 * N
    s = stack(part_rows=50_000)
    w1, _ = s.workers("w1", "w2")
    job_id = submit(s.api.url, _csv(demo_data, n), "csv", id_column="key",
                    output_format="parquet").json()["id"]

    def w1_part() -> int:  # the part w1's pool process took last (from its log)
        found = re.findall(rf"\['{job_id}', (\d+), \d+\]", Path(w1.log_path).read_text())
        return int(found[-1])

    def segments(index: int) -> int:
        raw, _ = s.jobs.part_checkpoint(job_id, index)
        return len(raw.get("segments") or []) if raw else 0

    wait_until(lambda: segments(w1_part()) >= 5, 60, "w1's part's closed segments")
    index = w1_part()
    assert not s.jobs.part_states(job_id, s.record(job_id).parts_total)[index].done
    for child in _pool_children(w1):
        child.kill()
    raw, _ = s.jobs.part_checkpoint(job_id, index)
    adopted = {Path(key).name for key in (raw or {}).get("segments") or []}
    done = wait_job(s.api.url, job_id, timeout=LEASE + 60)
    assert done["status"] == "succeeded", done
    _ledger(s, job_id, list(range(n)), adopted)
    assert s.logged(f"job {job_id} part {index}: attempt 2 resumes after row ") == 1
    assert s.logged(": attempt 2 starts from the first row") == 0
