"""Disk space and sweeping, piece by piece: which files are dead, the reserve, a full disk
recognised, failed jobs' files after their grace period, dead processes' metric files."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import time

import pytest
from prometheus_client import multiprocess
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from shared.config import Settings
from shared.diskspace import check_free_space, disk_usage, is_disk_full
from shared.errors import ConfigError, InsufficientStorageError
from shared.jobs import paths
from shared.jobs.leftovers import dead_files
from shared.jobs.record import JobError, JobStatus, new_job
from shared.jobs.retention import purge_expired
from shared.jobs.store import JobStore, PartAttempt
from shared.monitoring import metricsdir
from shared.storage import LocalStorage, written_key

TMP = "0123456789abcdef0123456789abcdef"


def _job(status: JobStatus, attempt: int = 1, **fields):
    job = new_job("j", {"name": "m", "version": 1}, {"output_format": "csv"},
                  {"key": "jobs/j/input.csv", "format": "csv"}, None, 0)
    job.status, job.attempt = status, attempt
    for name, value in fields.items():
        setattr(job, name, value)
    return job


@pytest.mark.parametrize("key,owner", [
    ("jobs/j/input.csv", None),
    ("jobs/j/result.csv", (None, 1)),
    ("jobs/j/result.a3.parquet", (None, 3)),
    ("jobs/j/errors.a2.csv", (None, 2)),
    ("jobs/j/parts/00004.csv", (4, 1)),
    ("jobs/j/parts/00004.a2.errors.csv", (4, 2)),
    ("jobs/j/00004.csv", None),
    ("jobs/j/parts/result.csv", None),
    ("other/j/result.csv", None),
])
def test_the_attempt_a_file_belongs_to(key, owner):
    assert paths.attempt_of(key) == owner


def test_a_temporary_file_is_known_by_the_key_it_becomes():
    assert written_key(f"jobs/j/parts/.00001.a2.csv.{TMP}.part") == "jobs/j/parts/00001.a2.csv"
    assert written_key(f".result.csv.{TMP}.part") == "result.csv"
    assert written_key("jobs/j/input.csv") == "jobs/j/input.csv"


FILES = ["jobs/j/input.csv", "jobs/j/result.csv", f"jobs/j/.result.csv.{TMP}.part",
         "jobs/j/result.a2.csv", f"jobs/j/.result.a2.csv.{TMP}.part",
         f"jobs/j/.result.a3.csv.{TMP}.part", "jobs/j/notes.txt"]


@pytest.mark.parametrize("status,attempt,dead", [
    # attempt 2 runs: attempt 1's files are dead, its own and later ones are not
    (JobStatus.RUNNING, 2, ["jobs/j/result.csv", f"jobs/j/.result.csv.{TMP}.part"]),
    # attempt 2 was lost, the job waits for attempt 3: attempt 2's files are dead too
    (JobStatus.QUEUED, 2, ["jobs/j/result.csv", f"jobs/j/.result.csv.{TMP}.part",
                           "jobs/j/result.a2.csv", f"jobs/j/.result.a2.csv.{TMP}.part"]),
])
def test_files_of_attempts_before_the_live_one_are_dead(status, attempt, dead):
    assert dead_files(_job(status, attempt), FILES, [], time.time(), 3600) == dead


def test_a_succeeded_job_keeps_its_input_result_and_errors_only():
    job = _job(JobStatus.SUCCEEDED, 2, output={"key": "jobs/j/result.a2.csv"},
               errors_key="jobs/j/errors.a2.csv", finished_at=time.time())
    files = [*FILES, "jobs/j/errors.a2.csv"]
    kept = ["jobs/j/input.csv", "jobs/j/result.a2.csv", "jobs/j/errors.a2.csv"]
    assert dead_files(job, files, [], time.time(), 3600) == [f for f in files if f not in kept]
    split = _job(JobStatus.SUCCEEDED, 1, output={"key": None, "parts": [
        "jobs/j/parts/00000.csv", "jobs/j/parts/00001.a2.csv"]})
    files = ["jobs/j/input.csv", "jobs/j/parts/00000.csv", "jobs/j/parts/00001.csv",
             "jobs/j/parts/00001.a2.csv"]
    assert dead_files(split, files, [], time.time(), 3600) == ["jobs/j/parts/00001.csv"]


def test_a_failed_job_keeps_its_input_for_the_grace_period_then_nothing():
    ended = time.time() - 100
    job = _job(JobStatus.FAILED, 1, finished_at=ended)
    assert dead_files(job, FILES, [], time.time(), 3600) == FILES[1:]
    assert dead_files(job, FILES, [], time.time(), 60) == FILES
    job.input["url"] = "file:///elsewhere/in.csv"  # an input_url file is never the job's
    job.input["key"] = job.input["url"]
    assert "jobs/j/input.csv" in dead_files(job, FILES, [], time.time(), 3600)


def test_parts_keep_their_live_attempt_and_their_result():
    job = _job(JobStatus.RUNNING, 1, parts_total=3, parts_dispatched=True)
    parts = [PartAttempt(2, False, {"output": "jobs/j/parts/00000.a2.csv",
                                    "errors": "jobs/j/parts/00000.a2.errors.csv"}),
             PartAttempt(2, True, None),   # attempt 2 runs
             PartAttempt(1, False, None)]  # attempt 1 was lost; waits for attempt 2
    files = ["jobs/j/input.csv", "jobs/j/result.a2.parquet",  # the assembly's: left alone
             "jobs/j/parts/00000.csv", "jobs/j/parts/00000.a2.csv",
             "jobs/j/parts/00000.a2.errors.csv",
             f"jobs/j/parts/.00001.csv.{TMP}.part", f"jobs/j/parts/.00001.a2.csv.{TMP}.part",
             f"jobs/j/parts/.00002.csv.{TMP}.part", f"jobs/j/parts/.00002.a2.csv.{TMP}.part"]
    assert dead_files(job, files, parts, time.time(), 3600) == [
        "jobs/j/parts/00000.csv", f"jobs/j/parts/.00001.csv.{TMP}.part",
        f"jobs/j/parts/.00002.csv.{TMP}.part"]


def test_the_sweep_removes_failed_jobs_files_after_the_grace_and_dead_attempts_files(
        redis_client, tmp_path):
    jobs = JobStore(redis_client, ttl_seconds=600)
    storage = LocalStorage(tmp_path)
    for job_id in ("failed", "recent", "done"):
        jobs.create(new_job(job_id, {"name": "m", "version": 1}, {},
                            {"key": paths.upload(job_id, "csv")}, None, 0))
        for key in (paths.upload(job_id, "csv"), paths.result(job_id, "csv")):
            with storage.writer(key) as fh:
                fh.write(b"a\n1\n")
    jobs.start("done", 1, "w")
    with storage.writer(paths.result("done", "csv", 2)) as fh:  # a late attempt's
        fh.write(b"a\n1\n")
    jobs.finish("done", JobStatus.SUCCEEDED, 1, output={"key": paths.result("done", "csv")})
    jobs.fail("failed", JobError("insufficient_storage", "full"))
    redis_client.hset("tabserve:job:failed", "finished_at", time.time() - 120)
    jobs.fail("recent", JobError("insufficient_storage", "full"))
    assert purge_expired(jobs, storage, failed_grace_seconds=60) == 2 + 1 + 1
    assert not storage.path("jobs/failed").exists()
    assert jobs.get("failed").error.code == "insufficient_storage"  # the record stays
    assert sorted(storage.list_files("jobs/recent")) == [paths.upload("recent", "csv")]
    assert sorted(storage.list_files("jobs/done")) == [paths.upload("done", "csv"),
                                                      paths.result("done", "csv")]


def test_a_full_disk_is_recognised_through_what_it_caused():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/jobs/x/result.csv")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("writing failed") from exc
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(None)


def test_the_reserve_counts_what_is_coming(tmp_path):
    free, size = disk_usage(tmp_path / "not" / "made" / "yet")  # its nearest parent's
    assert 0 < free <= size
    check_free_space([tmp_path], reserve=free // 2, incoming=free // 4)
    with pytest.raises(InsufficientStorageError) as refused:
        check_free_space([tmp_path], reserve=free // 2, incoming=free // 2 + 1)
    assert refused.value.status == 507 and "TABSERVE_MIN_FREE_BYTES" in refused.value.message
    assert str(tmp_path) not in refused.value.message


@pytest.mark.parametrize("name,value", [("TABSERVE_MIN_FREE_BYTES", "-1"),
                                        ("TABSERVE_FAILED_JOB_GRACE_SECONDS", "soon"),
                                        ("TABSERVE_SWEEP_INTERVAL_SECONDS", "0")])
def test_the_disk_settings_are_validated(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write(path, values: dict[str, tuple[float, float]]) -> None:
    out = MmapedDict(str(path))
    for key, (value, stamp) in values.items():
        out.write_value(key, value, stamp)
    out.close()


def _collected(directory) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in multiprocess.MultiProcessCollector(None, path=str(directory)).collect()
            for s in m.samples}


def test_dead_processes_files_are_folded_and_the_totals_kept(tmp_path):
    dead, other_dead = _dead_pid(), _dead_pid()
    counter = mmap_key("tabserve_x_total", "tabserve_x_total", ["k"], ["a"], "x")
    hist = mmap_key("tabserve_h", "tabserve_h_bucket", ["le"], ["1.0"], "h")
    gauge = mmap_key("tabserve_g", "tabserve_g", [], [], "g")
    _write(tmp_path / "counter_1.db", {counter: (5.0, 0.0)})  # pid 1 is alive
    _write(tmp_path / f"counter_{dead}.db", {counter: (3.0, 0.0)})
    _write(tmp_path / f"counter_{other_dead}.db", {counter: (2.0, 0.0)})
    _write(tmp_path / f"histogram_{dead}.db", {hist: (4.0, 0.0)})
    _write(tmp_path / f"gauge_max_{dead}.db", {gauge: (7.0, 0.0)})
    _write(tmp_path / f"gauge_max_{other_dead}.db", {gauge: (9.0, 0.0)})
    _write(tmp_path / f"gauge_livesum_{dead}.db", {gauge: (100.0, 0.0)})
    before = _collected(tmp_path)
    assert metricsdir.sweep_dead(tmp_path) == 6
    left = sorted(p.name for p in tmp_path.glob("*.db"))
    assert left == ["counter_1.db", "counter_archive.db", "gauge_max_archive.db",
                    "histogram_archive.db"]
    after = _collected(tmp_path)
    assert after[("tabserve_x_total", (("k", "a"),))] == 10.0
    assert after == {k: v for k, v in before.items() if k != ("tabserve_g", ())} | {
        ("tabserve_g", ()): 9.0}  # the live gauge of a dead process is gone
    third = _dead_pid()  # a later death adds to the archive
    _write(tmp_path / f"counter_{third}.db", {counter: (1.0, 0.0)})
    assert metricsdir.sweep_dead(tmp_path) == 1
    assert _collected(tmp_path)[("tabserve_x_total", (("k", "a"),))] == 11.0


def test_directories_of_dead_servers_are_removed(tmp_path):
    here = os.readlink("/proc/self/ns/pid")
    gone = tmp_path / "tabserve-metrics-worker-gone"
    older = tmp_path / "tabserve-metrics-worker-older"  # a marker from before namespaces
    live = tmp_path / "tabserve-metrics-api-live"
    foreign = tmp_path / "tabserve-metrics-unmarked"
    # Made in another PID namespace (a container sharing /tmp, a test's unshare): its pid
    # cannot be seen from here, which does not make it dead.
    elsewhere = tmp_path / "tabserve-metrics-api-elsewhere"
    dead = _dead_pid()
    for directory, marker in ((gone, f"{dead} {here}"), (older, f"{dead}"),
                              (live, f"1 {here}"), (foreign, None),
                              (elsewhere, f"{dead} pid:[1]")):
        directory.mkdir()
        if marker is not None:
            (directory / metricsdir.MARKER).write_text(marker + "\n")
    assert sorted(metricsdir.remove_dead_dirs(tmp_path)) == sorted([gone, older])
    assert not gone.exists() and live.is_dir() and foreign.is_dir() and elsewhere.is_dir()


def test_a_prepared_directory_names_its_makers_pid_namespace(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env: dict[str, str] = {}
    directory = metricsdir.prepare(env, "api")
    assert (directory / metricsdir.MARKER).read_text().split() == [
        str(os.getpid()), os.readlink("/proc/self/ns/pid")]
    assert metricsdir.remove_dead_dirs(tmp_path) == []
    assert metricsdir.remove_if_owned(directory) and not directory.exists()
