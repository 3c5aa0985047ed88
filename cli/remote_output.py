"""What the remote commands show: tables, a job's fields, and progress bars on stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from tabserve_client import Job


def echo_json(value: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(value, indent=2, default=str))


def echo_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Rows as left-aligned columns under a header."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def prediction_rows(answer: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The header and rows of a /predict answer, one row per input row."""
    if "predictions" in answer:
        predictions, probabilities = answer["predictions"], answer.get("probabilities")
        ids = answer.get("prediction_ids") or [None] * len(predictions)
    else:
        predictions, probabilities = [answer["prediction"]], None
        if answer.get("probabilities") is not None:
            probabilities = [answer["probabilities"]]
        ids = [answer.get("prediction_id")]
    classes = list(probabilities[0]) if probabilities else []
    header = ["row", "prediction", *[f"p({c})" for c in classes], "prediction_id"]
    rows = [[i, p, *[probabilities[i][c] for c in classes], ids[i]] if probabilities
            else [i, p, ids[i]] for i, p in enumerate(predictions)]
    return header, rows


def job_row(job: Job) -> list[Any]:
    rows = f"{job.rows_done}/{job.rows_total if job.rows_total is not None else '?'}"
    return [job.id, job.status, job.model_ref, rows, f"{job.fraction:.0%}", job.created_at,
            job.finished_at]


JOB_HEADER = ["id", "status", "model", "rows", "progress", "created", "finished"]


def echo_job(job: Job) -> None:
    """One job's fields, one per line."""
    raw = job.raw
    lines = [("id", job.id), ("status", job.status), ("model", job.model_ref),
             ("input", (raw.get("input") or {}).get("name")),
             ("rows", f"{job.rows_done} of {job.rows_total if job.rows_total is not None else '?'}"
                      f" ({job.fraction:.0%}), {job.rows_failed} failed"),
             ("created", job.created_at), ("started", job.started_at),
             ("finished", job.finished_at)]
    if job.error:
        lines.append(("error", _error_text(job.error)))
    lines += [(name, link) for name, link in (raw.get("links") or {}).items() if name != "self"]
    for name, value in lines:
        click.echo(f"{name + ':':10} {_cell(value)}")


def _error_text(error: dict[str, Any]) -> str:
    where = ", ".join(f"{k} {error[k]}" for k in ("row", "field") if k in error)
    return f"{error.get('message')} [{error.get('code')}]" + (f" ({where})" if where else "")


def show_bars() -> bool:
    """Progress bars only for a person: when stderr is a terminal."""
    return sys.stderr.isatty()


def _width() -> dict[str, Any]:
    # The window's width, followed as it changes; a terminal that reports none (a new pty,
    # some `docker exec`) gets 80 columns rather than an empty bar.
    try:
        known = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError):
        known = False
    return {"dynamic_ncols": True} if known else {"ncols": 80}


@contextmanager
def byte_bar(what: str, enabled: bool) -> Iterator[Any]:
    """A tqdm bar of bytes (rate in B/s) whose update(done, total) takes running totals."""
    from tqdm import tqdm

    with tqdm(desc=what, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
              file=sys.stderr, leave=True, **_width()) as bar:
        def update(done: int, total: int | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        yield update


@contextmanager
def rows_bar(enabled: bool) -> Iterator[Any]:
    """A tqdm bar of a job's rows (rows/s, ETA) updated from each job record."""
    from tqdm import tqdm

    with tqdm(desc="scoring", unit="rows", unit_scale=True, disable=not enabled,
              file=sys.stderr, leave=True, **_width()) as bar:
        def update(job: Job) -> None:
            # A CSV job counts its rows as it reads them: until then the total is estimated
            # from the fraction of the file's bytes read.
            total = job.rows_total
            if total is None and job.fraction > 0:
                total = round(job.rows_done / job.fraction)
            if total and bar.total != total:
                bar.total = total
            bar.set_postfix_str(job.status, refresh=False)
            bar.update(max(job.rows_done - bar.n, 0))

        yield update
