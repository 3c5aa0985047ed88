"""Issue 18's table (bench.goals): rows recorded by each benchmark, one table in the issue's
order; a row from another run than this `make bench` is marked, a missing one says so."""

from __future__ import annotations

import pytest

from bench import goals


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(goals, "STORE", tmp_path / "goals.json")
    return tmp_path / "goals.json"


def test_rows_are_kept_per_goal_and_tabled_in_the_issue_s_order(store, monkeypatch):
    monkeypatch.setenv(goals.RUN_ENV, "old")
    goals.record("worker_time", "1.90×", False, "python -m bench.batch")
    monkeypatch.setenv(goals.RUN_ENV, "new")
    goals.record("worker_time", "2.10×", True, "python -m bench.batch")
    goals.record("mlserver", "2.1×", False, "python -m bench.online", "quick run")
    goals.record("uploads", "p99 1.2×", None, "python -m bench.isolation", "busy")
    monkeypatch.setenv(goals.RUN_ENV, "newer")
    goals.record("rss", "1/3.5", True, "python -m bench.batch")
    text = goals.table(goals._load(), "new")
    rows = [line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| measure |")]
    assert len(rows) == len(goals.GOALS)
    assert [r.split(" | ")[0] for r in rows] == [f"| {g.measure}" for g in goals.GOALS]
    by_key = dict(zip((g.key for g in goals.GOALS), rows, strict=True))
    assert "2.10×" in by_key["worker_time"] and "| pass |" in by_key["worker_time"]
    assert "1.90×" not in text
    assert "2.1× (quick run) | **FAIL** |" in by_key["mlserver"]
    assert "| not judged |" in by_key["uploads"]
    assert "(an earlier run)" in by_key["rss"]  # not this run's
    assert "(an earlier run)" not in by_key["worker_time"]
    assert "not measured" in by_key["end_to_end"]
    assert "`make bench` run of new" in text


def test_an_unknown_goal_is_refused(store):
    with pytest.raises(KeyError):
        goals.record("nonsense", "1×", True, "x")
