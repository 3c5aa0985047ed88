"""Commands that talk to a running server through tabserve_client: predict, score, jobs,
cancel. They need no server settings; the client is imported when a command runs, so
`tabserve --help` stays fast."""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from cli import remote_output as out

if TYPE_CHECKING:
    from tabserve_client import Client, Job

COMMANDS = ("predict", "score", "jobs", "cancel")
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C


def remote_command(func: Callable[..., None]) -> Callable[..., None]:
    """A command with --url, --api-key and --json, whose client errors end it with the
    server's message on stderr (and the error as JSON on stdout with --json), status 1."""
    @click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
    @click.option("--api-key", envvar="TABSERVE_API_KEY", default=None,
                  help="API key, sent as a Bearer token [env TABSERVE_API_KEY].")
    @click.option("--url", envvar="TABSERVE_URL", default=None,
                  help="The server [env TABSERVE_URL; default http://127.0.0.1:8000].")
    @functools.wraps(func)
    def command(url: str | None, api_key: str | None, as_json: bool, **kwargs: Any) -> None:
        from tabserve_client import Client, TabserveError

        with Client(url=url, api_key=api_key) as client:
            try:
                func(client, as_json, **kwargs)
            except TabserveError as exc:
                _fail(exc, as_json)

    return command


def _fail(exc: Any, as_json: bool) -> NoReturn:
    if as_json:
        out.echo_json({"error": {"code": exc.code, "message": exc.message,
                                 "status": exc.status, "details": exc.details}})
    click.echo(f"error: {exc.message}", err=True)
    for detail in exc.details[:20]:
        where = " ".join(f"{k} {detail[k]}" for k in ("row", "field") if k in detail)
        click.echo(f"  {where}: {detail.get('message')}" if where else
                   f"  {detail.get('message')}", err=True)
    sys.exit(1)


@click.command()
@click.argument("features", required=False)
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Rows from a .json file (an object or a list of objects) or a .csv file.")
@click.option("--model", help="NAME or NAME:VERSION (default: the server's default model).")
@remote_command
def predict(client: Client, as_json: bool, features: str | None, file_: Path | None,
            model: str | None) -> None:
    """Predict one row given as JSON ('{"feature": value, ...}'), or the rows of --file."""
    if (features is None) == (file_ is None):
        raise click.UsageError("give the row as a JSON argument or --file, one of them")
    rows = _read_rows(file_) if file_ is not None else _parse_json(features or "", "FEATURES")
    answer = client.predict(rows, model=model)
    if as_json:
        out.echo_json(answer)
        return
    out.echo_table(*out.prediction_rows(answer))
    click.echo(f"model {answer['model']['name']}:{answer['model']['version']}", err=True)


def _parse_json(text: str, what: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=what) from None
    if not isinstance(value, dict | list):
        raise click.BadParameter("must be an object or a list of objects", param_hint=what)
    return value


def _read_rows(path: Path) -> Any:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [{k: _csv_value(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    rows = _parse_json(path.read_text(encoding="utf-8"), "--file")
    if isinstance(rows, dict) and len(rows) == 1 and {"features", "instances"} & rows.keys():
        return next(iter(rows.values()))  # a /predict request body
    return rows


def _csv_value(text: str | None) -> Any:
    # CSV has no types: a number-looking cell is sent as a number, an empty one as null.
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@click.command()
@click.argument("input_path", metavar="INPUT",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=True, path_type=Path),
              help="Where to write the result (default: INPUT's name with -predictions, "
                   "beside it).")
@click.option("--format", "output_format", type=click.Choice(["csv", "parquet", "jsonl"]),
              help="The result's format (default: the input's).")
@click.option("--model", help="NAME or NAME:VERSION (default: the server's default model).")
@click.option("--id-column", help="An input column to copy into the result as its id.")
@click.option("--no-wait", is_flag=True, help="Print the job id once queued, and return.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the job.")
@remote_command
def score(client: Client, as_json: bool, input_path: Path, output: Path | None,
          output_format: str | None, model: str | None, id_column: str | None,
          no_wait: bool, timeout: float | None) -> None:
    """Score a CSV or Parquet file as a batch job: upload, wait, download the result."""
    bars = out.show_bars() and not as_json
    try:
        with out.byte_bar("upload", bars) as uploaded:
            job = client.submit_job(input_path, model=model, output_format=output_format,
                                    id_column=id_column, progress=uploaded)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the upload stopped, no job was queued", err=True)
        sys.exit(INTERRUPTED)
    if no_wait:
        if as_json:
            out.echo_json(job.raw)
        else:
            click.echo(job.id)
        return
    click.echo(f"job {job.id} queued ({job.model_ref})", err=True)
    job = _wait(client, job, timeout, bars)
    fmt = (job.raw.get("output") or {}).get("format") or output_format or "csv"
    target = output or input_path.with_name(f"{input_path.stem}-predictions.{fmt}")
    try:
        with out.byte_bar("download", bars) as downloaded:
            saved = client.download(job.id, target, progress=downloaded)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: the download stopped; job {job.id} keeps its result",
                   err=True)
        sys.exit(INTERRUPTED)
    if as_json:
        out.echo_json({**job.raw, "saved_to": str(saved)})
    else:
        click.echo(str(saved))
        click.echo(f"{job.rows_done} rows scored by {job.model_ref}", err=True)


def _wait(client: Client, job: Job, timeout: float | None, bars: bool) -> Job:
    try:
        with out.rows_bar(bars) as progress:
            return client.wait(job.id, timeout=timeout, progress=progress)
    except KeyboardInterrupt:
        _offer_cancel(client, job.id)


def _offer_cancel(client: Client, job_id: str) -> NoReturn:
    """After Ctrl-C: ask, then cancel the job or leave it running; exit 130 either way."""
    click.echo("", err=True)
    try:
        answer = click.confirm(f"cancel job {job_id}?", default=False, err=True)
    except (click.Abort, KeyboardInterrupt, EOFError):
        answer = False
    if answer:
        cancelled = client.cancel(job_id)
        state = cancelled.status if cancelled is not None else "deleted"
        click.echo(f"job {job_id}: {state}", err=True)
    else:
        click.echo(f"job {job_id} goes on: `tabserve jobs {job_id}` shows it", err=True)
    sys.exit(INTERRUPTED)


@click.command()
@click.argument("job_id", required=False)
@click.option("--limit", type=int, default=20, show_default=True, help="How many jobs to list.")
@click.option("--status", help="Only jobs with this status.")
@remote_command
def jobs(client: Client, as_json: bool, job_id: str | None, limit: int,
         status: str | None) -> None:
    """List recent jobs, or show one job (its status, progress, error and links)."""
    if job_id:
        job = client.get_job(job_id)
        if as_json:
            out.echo_json(job.raw)
        else:
            out.echo_job(job)
        return
    listed = client.list_jobs(limit=limit, status=status)
    if as_json:
        out.echo_json([j.raw for j in listed])
    else:
        out.echo_table(out.JOB_HEADER, [out.job_row(j) for j in listed])


@click.command()
@click.argument("job_id")
@remote_command
def cancel(client: Client, as_json: bool, job_id: str) -> None:
    """Cancel a queued or running job (a finished one is deleted, with its files)."""
    job = client.cancel(job_id)
    if as_json:
        out.echo_json(job.raw if job is not None else {"id": job_id, "deleted": True})
    elif job is None:
        click.echo(f"job {job_id}: deleted")
    else:
        click.echo(f"job {job_id}: {job.status}")


def register(group: click.Group) -> None:
    """Add the remote commands to the `tabserve` group."""
    for command in (predict, score, jobs, cancel):
        group.add_command(command)
