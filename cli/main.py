"""The `tabserve` command: train, import, list models, run the API and workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from shared.config import Settings
from shared.errors import TabserveError


class _Group(click.Group):
    # Domain errors become one clear line on stderr and exit status 2.
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except TabserveError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Serve pickled tabular models online and in batch."""
    ctx.obj = Settings.from_env()


def _store(settings: Settings):  # noqa: ANN202 - keeps heavy imports out of `--help`
    from shared.models.store import ModelStore

    return ModelStore(settings.artifacts_dir)


@main.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or Parquet training file (omit for the bundled demo data).")
@click.option("--target", help="Target column in --data.")
@click.option("--name", help="Model name (default: the demo name, or the file's stem).")
@click.option("--task", type=click.Choice(["classification", "regression"]))
@click.option("--algorithm", default=None,
              type=click.Choice(["xgboost", "hist-gradient-boosting", "random-forest", "logistic"]))
@click.pass_obj
def train(settings: Settings, data: Path | None, target: str | None, name: str | None,
          task: str | None, algorithm: str | None) -> None:
    """Train a model and write the next version into the artifacts directory."""
    from shared.models import training

    store = _store(settings)
    if data is None:
        if target:
            raise click.UsageError("--target needs --data")
        manifest = training.train_demo(store, algorithm or "xgboost")
    else:
        if not target:
            raise click.UsageError("--data needs --target")
        manifest = training.train_from_file(
            store, data, target, name=name, task=task,  # type: ignore[arg-type]
            algorithm=algorithm or "hist-gradient-boosting",
        )
    click.echo(f"trained {manifest.ref} ({manifest.algorithm}) metrics={manifest.metrics}")


@main.command(name="import")
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name.")
@click.option("--sample", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or Parquet sample of the model's input (for schema and statistics).")
@click.option("--target", help="Target column in the sample, for holdout metrics.")
@click.pass_obj
def import_(settings: Settings, model_file: Path, name: str, sample: Path,
            target: str | None) -> None:
    """Register a pickled model you already have."""
    from shared.models import training

    manifest = training.import_model(_store(settings), model_file, name, sample, target)
    click.echo(f"imported {manifest.ref} ({manifest.algorithm}, {len(manifest.features)} features)")


@main.command(name="models")
@click.pass_obj
def list_models(settings: Settings) -> None:
    """List the models and versions in the artifacts directory."""
    for name, versions in _store(settings).list_models(fresh=True).items():
        click.echo(f"{name}: versions {', '.join(map(str, versions))}")


@main.command()
@click.option("--bind", default=None, help="HOST:PORT (default 127.0.0.1:8000).")
@click.option("--workers", type=int, default=None, help="gunicorn workers (default: CPU count).")
def api(bind: str | None, workers: int | None) -> None:
    """Run the HTTP API under gunicorn."""
    env = dict(os.environ)
    if bind:
        env["TABSERVE_BIND"] = bind
    if workers:
        env["TABSERVE_WEB_WORKERS"] = str(workers)
    _metrics_dir(env, "api")
    _exec([sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf", "api.wsgi:app"],
          env)


@main.command()
@click.option("--concurrency", "-c", type=int, default=None,
              help="Worker processes (default: CPU count).")
@click.option("--queues", "-Q", default=None, help="Comma-separated queues to consume.")
@click.option("--hostname", "-n", default=None, help="Celery node name.")
@click.option("--loglevel", default=None)
def worker(concurrency: int | None, queues: str | None, hostname: str | None,
           loglevel: str | None) -> None:
    """Run a Celery worker that scores batch jobs."""
    args = [sys.executable, "-m", "celery", "-A", "worker.app:celery_app", "worker",
            "--prefetch-multiplier", "1", "-O", "fair"]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    if queues:
        args += ["--queues", queues]
    # Unique per process, so replicas on one host keep apart in Redis and in the logs.
    args += ["--hostname", hostname or f"worker-{os.getpid()}@%h"]
    args += ["--loglevel", (loglevel or os.environ.get("TABSERVE_LOG_LEVEL", "INFO")).upper()]
    env = dict(os.environ)
    _metrics_dir(env, "worker")
    _exec(args, env)


@main.command()
@click.option("--port", type=int, default=8000)
@click.pass_obj
def run(settings: Settings, port: int) -> None:
    """Development: start Redis (if needed), the API and one worker; Ctrl-C stops all."""
    from cli.devserver import run_all

    sys.exit(run_all(settings, port))


def _metrics_dir(env: dict[str, str], role: str) -> None:
    # prometheus_client picks multiprocess mode from this variable at import, so it is set
    # here, before gunicorn or Celery starts; a fresh directory per run holds no stale files.
    directory = env.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        import tempfile

        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"tabserve-metrics-{role}-")
        env["TABSERVE_METRICS_DIR_OWNED"] = "1"
    else:  # given by the deployment: drop a previous run's files before anything opens them
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()


def _exec(args: list[str], env: dict[str, str]) -> None:
    # Native thread pools at one per process unless the user says otherwise.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    sys.stdout.flush()
    os.execvpe(args[0], args, env)


if __name__ == "__main__":
    main()
