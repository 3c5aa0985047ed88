"""Conventions the code keeps: a job status is named only by its enum, a Redis key is built
only in shared/keys.py, a job's storage path only in shared/jobs/paths.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from shared.jobs.record import JobStatus, Outcome

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "worker", "cli", "shared")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string literal in a module but its docstrings, with its line."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def _offenders(allowed: set[str], bad: re.Pattern[str]) -> list[str]:
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        found += [f"{rel}:{line}: {text!r}" for line, text in _string_constants(path)
                  if bad.search(text)]
    return found


def test_statuses_are_named_only_by_their_enum():
    # "missing" and "split" are ordinary words too (a missing field); the rest are not.
    words = {*JobStatus, Outcome.STALE, Outcome.DUPLICATE, Outcome.PART_DONE}
    names = "|".join(sorted(words))
    found = _offenders({"shared/jobs/record.py"}, re.compile(rf"^({names})$|'({names})'"))
    assert not found, "status strings outside shared/jobs/record.py:\n" + "\n".join(found)


def test_redis_keys_are_built_only_in_keys_module():
    found = _offenders({"shared/keys.py"}, re.compile(r"^tabserve:|[^\w.]tabserve:"))
    assert not found, "Redis key text outside shared/keys.py:\n" + "\n".join(found)


def test_job_storage_paths_are_built_only_in_paths_module():
    found = _offenders({"shared/jobs/paths.py"}, re.compile(r"^jobs/"))
    assert not found, "job storage paths outside shared/jobs/paths.py:\n" + "\n".join(found)


@pytest.mark.parametrize("value", [*JobStatus, *Outcome])
def test_every_answer_a_script_gives_is_named(value):
    from shared.jobs import scripts
    from shared.jobs.record import answer

    assert answer(value.value.encode()) == value
    assert "$" not in scripts.START + scripts.FINISH + scripts.PART_DONE
