"""The `tabserve` command: train, import, list models, run the API and workers; and
(cli/remote.py) predict, score files and manage jobs on a running server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cli import remote
from shared.allocator import worker_arenas
from shared.config import Settings
from shared.errors import TabserveError
from shared.jobs.pipeline import cores
from shared.monitoring import metricsdir


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
    # The remote commands are clients of a server: they read no server settings, so a
    # client's environment needs none of them right.
    if ctx.invoked_subcommand not in remote.COMMANDS:
        ctx.obj = Settings.from_env()


remote.register(main)


PROMOTE_OPTION = click.option(
    "--promote/--no-promote", default=None,
    help="Serve the new version at once (default: TABSERVE_AUTO_PROMOTE, off; a model's "
         "first version is always served).")


def _store(settings: Settings):  # noqa: ANN202 - keeps heavy imports out of `--help`
    from shared.models.store import ModelStore

    return ModelStore.from_settings(settings)


@main.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or Parquet training file (omit for the bundled demo data).")
@click.option("--target", help="Target column in --data.")
@click.option("--name", help="Model name (default: the demo name, or the file's stem).")
@click.option("--task", type=click.Choice(["classification", "regression"]))
@click.option("--algorithm", default=None,
              type=click.Choice(["xgboost", "hist-gradient-boosting", "random-forest", "logistic"]))
@PROMOTE_OPTION
@click.pass_obj
def train(settings: Settings, data: Path | None, target: str | None, name: str | None,
          task: str | None, algorithm: str | None, promote: bool | None) -> None:
    """Train a model and write the next version into the artifacts directory."""
    from shared.models import training

    store = _store(settings)
    if data is None:
        if target:
            raise click.UsageError("--target needs --data")
        manifest = training.train_demo(store, algorithm or "xgboost", promote=promote)
    else:
        if not target:
            raise click.UsageError("--data needs --target")
        manifest = training.train_from_file(
            store, data, target, name=name, task=task,  # type: ignore[arg-type]
            algorithm=algorithm or "hist-gradient-boosting", promote=promote,
        )
    click.echo(f"trained {manifest.ref} ({manifest.algorithm}) metrics={manifest.metrics}")
    _say_live(store, manifest.name, manifest.version)


@main.command(name="import")
@click.argument("model_file", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Model name.")
@click.option("--sample", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or Parquet sample of the model's input (for schema and statistics); "
                   "optional for an MLflow directory whose MLmodel has a signature.")
@click.option("--target", help="Target column in the sample, for holdout metrics.")
@PROMOTE_OPTION
@click.pass_obj
def import_(settings: Settings, model_file: Path, name: str, sample: Path | None,
            target: str | None, promote: bool | None) -> None:
    """Register a model you already have: a pickle or joblib file, an XGBoost JSON/UBJSON
    file, or an MLflow model directory (sklearn or xgboost flavour)."""
    from shared.models.importing import import_model

    store = _store(settings)
    manifest = import_model(store, model_file, name, sample, target, promote=promote)
    click.echo(f"imported {manifest.ref} ({manifest.algorithm}, {len(manifest.features)} features)")
    _say_live(store, manifest.name, manifest.version)


def _say_live(store, name: str, version: int) -> None:  # noqa: ANN001 - a ModelStore
    live = store.live_version(name)
    if live != version:
        click.echo(f"{name}:{version} is not live ({name}:{live} is): run 'tabserve promote "
                   f"{name} {version}' to serve it")


@main.command(name="models")
@click.pass_obj
def list_models(settings: Settings) -> None:
    """List the models, their versions, aliases and live version."""
    store = _store(settings)
    for name, versions in store.list_models(fresh=True).items():
        state = store.lifecycle(name)
        aliases = ", ".join(f"{a}={v}" for a, v in sorted(state["aliases"].items()))
        live = state["live"] if state["live"] is not None else state.get("aliases_error")
        click.echo(f"{name}: versions {', '.join(map(str, versions))}; live {live}"
                   + (f"; aliases {aliases}" if aliases else ""))


@main.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int, required=False)
@click.option("--remove", is_flag=True, help="Remove the alias (not 'live': promote instead).")
@click.pass_obj
def alias(settings: Settings, name: str, alias: str, version: int | None, remove: bool) -> None:
    """Point the model NAME's ALIAS (champion, challenger, ...) at VERSION.

    Requests for NAME@ALIAS get that version; every server follows within a few seconds.
    The alias 'live' is the one unpinned requests get: `tabserve promote` moves it.
    """
    if remove == (version is not None):
        raise click.UsageError("give a VERSION, or --remove")
    previous = _store(settings).set_alias(name, alias, version, "cli")
    was = f" (was {previous})" if previous is not None else ""
    click.echo(f"{name}@{alias} removed{was}" if remove else f"{name}@{alias} -> {version}{was}")


@main.command()
@click.argument("name")
@click.argument("version", type=int)
@click.pass_obj
def promote(settings: Settings, name: str, version: int) -> None:
    """Serve VERSION of the model NAME to unpinned requests (moves its 'live' alias).

    A rollback is a promote of the version before; nothing is deleted. Every API process and
    worker follows within a few seconds, loading the version before switching to it.
    """
    previous = _store(settings).promote(name, version, "cli")
    click.echo(f"{name}: live version {version} (was {previous}); roll back with "
               f"'tabserve promote {name} {previous}'" if previous not in (None, version)
               else f"{name}: live version {version}")


@main.command()
@click.argument("refs", nargs=-1)
@click.option("--all", "sign_all", is_flag=True, help="Sign every version of every model.")
@click.pass_obj
def sign(settings: Settings, refs: tuple[str, ...], sign_all: bool) -> None:
    """Sign models' manifests with the first key of TABSERVE_MODEL_SIGNING_KEY_FILE.

    REFS are NAME (every version), NAME:VERSION or NAME@ALIAS. Sign only models you trust: a signed
    model is loaded by every server that holds the key.
    """
    from shared.models.store import parse_ref

    if sign_all == bool(refs):
        raise click.UsageError("give model references or --all, not both")
    store = _store(settings)
    listing = store.list_models(fresh=True)
    targets: list[tuple[str, int]] = []
    for ref in refs or listing:
        name, version, alias = parse_ref(ref)
        if alias is not None:
            version = store.resolve(ref)[1]
        versions = listing.get(name, [])
        if version is not None and version not in versions or not versions:
            raise click.UsageError(f"no model {ref!r} in the artifacts directory")
        targets += [(name, v) for v in ([version] if version is not None else versions)]
    for name, version in targets:
        manifest = store.sign(name, version)
        click.echo(f"signed {manifest.ref} (key {manifest.signing_key_id})")


@main.command()
@click.option("--bind", default=None, help="HOST:PORT (default: TABSERVE_BIND, 127.0.0.1:8000).")
@click.option("--workers", type=int, default=None,
              help="gunicorn workers (default: TABSERVE_WEB_WORKERS, the CPU count).")
@click.pass_obj
def api(settings: Settings, bind: str | None, workers: int | None) -> None:
    """Run the HTTP API under gunicorn."""
    settings = _with_flags(settings, bind=bind, web_workers=workers)
    _run_api(settings)


# SageMaker's inference container contract: `docker run IMAGE serve`, port 8080, the model
# unpacked under /opt/ml/model.
SAGEMAKER_BIND = "0.0.0.0:8080"
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")


@main.command()
@click.option("--bind", default=None,
              help="HOST:PORT (default: TABSERVE_BIND if set, else 0.0.0.0:8080).")
@click.pass_obj
def serve(settings: Settings, bind: str | None) -> None:
    """Run the API as a SageMaker inference container (/ping, /invocations on port 8080)."""
    if bind is None and "TABSERVE_BIND" not in os.environ:
        port = os.environ.get("SAGEMAKER_BIND_TO_PORT")
        bind = f"0.0.0.0:{port}" if port else SAGEMAKER_BIND
    artifacts = None
    if "TABSERVE_ARTIFACTS_DIR" not in os.environ and SAGEMAKER_MODEL_DIR.is_dir():
        artifacts = SAGEMAKER_MODEL_DIR
    settings = _with_flags(settings, bind=bind, artifacts_dir=artifacts)
    _run_api(settings)


@main.command()
@click.option("--bind", default=None,
              help="HOST:PORT or unix:PATH to probe (default: the running API's own address, "
                   "else TABSERVE_BIND).")
@click.option("--timeout", type=float, default=4.0, show_default=True, help="Seconds.")
@click.pass_obj
def healthcheck(settings: Settings, bind: str | None, timeout: float) -> None:
    """Exit 0 when the API answers GET /healthz on the address it listens on (the image's
    HEALTHCHECK: port 8000 under `tabserve api`, 8080 under `serve`)."""
    import http.client

    from shared.monitoring.probe import api_binds, probe

    binds = [bind] if bind else api_binds() or [settings.bind]
    for address in binds:
        try:
            status = probe(address, timeout=timeout)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            click.echo(f"unhealthy: {address}: {exc}", err=True)
            sys.exit(1)
        if status != 200:
            click.echo(f"unhealthy: {address}: GET /healthz answered {status}", err=True)
            sys.exit(1)
        click.echo(f"healthy: {address}")


@main.command()
@click.option("--concurrency", "-c", type=int, default=None,
              help="Worker processes (default: CPU count).")
@click.option("--queues", "-Q", default=None, help="Comma-separated queues to consume.")
@click.option("--hostname", "-n", default=None, help="Celery node name.")
@click.option("--loglevel", default=None)
@click.pass_obj
def worker(settings: Settings, concurrency: int | None, queues: str | None,
           hostname: str | None, loglevel: str | None) -> None:
    """Run a Celery worker that scores batch jobs."""
    args = [sys.executable, "-m", "celery", "-A", "worker.app:celery_app", "worker",
            "--prefetch-multiplier", "1", "-O", "fair"]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    if queues:
        args += ["--queues", queues]
    # Unique per process, so replicas on one host keep apart in Redis and in the logs.
    args += ["--hostname", hostname or f"worker-{os.getpid()}@%h"]
    args += ["--loglevel", (loglevel or settings.log_level).upper()]
    env = {**os.environ, **settings.as_env()}
    # read by glibc as the process starts: few arenas, so that memory follows the chunks
    env.setdefault("MALLOC_ARENA_MAX", worker_arenas(cores(settings.worker_threads)))
    metricsdir.prepare(env, "worker")
    _exec(args, env)


@main.command()
@click.option("--bind", default=None, help="HOST:PORT for the API (default: TABSERVE_BIND).")
@click.option("--port", type=int, default=None, help="Port for the API on 127.0.0.1.")
@click.pass_obj
def run(settings: Settings, bind: str | None, port: int | None) -> None:
    """Development: start Redis (if needed), the API and one worker; Ctrl-C stops all."""
    from cli.devserver import run_all

    if port is not None:
        if bind:
            raise click.UsageError("give --bind or --port, not both")
        bind = f"127.0.0.1:{port}"
    sys.exit(run_all(_with_flags(settings, bind=bind)))


@main.group()
def keys() -> None:
    """Manage the API keys of TABSERVE_API_KEYS_FILE (servers re-read it: no restart)."""


def _keys_file(settings: Settings) -> Path:
    if settings.api_keys_file is None:
        raise click.UsageError("set TABSERVE_API_KEYS_FILE to the keys file to manage")
    return settings.api_keys_file


@keys.command(name="create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["admin", "submit", "predict", "read"]),
              help="What the key may do (docs/security.md).")
@click.pass_obj
def create_key(settings: Settings, name: str, role: str) -> None:
    """Create a key NAME and print it: it is shown this once, the file keeps its hash."""
    from shared.security.keyfile import create_key as create

    token = create(_keys_file(settings), name, role)
    click.echo(token)
    click.echo(f"created key {name!r} ({role}); store it now, it cannot be shown again",
               err=True)


@keys.command(name="list")
@click.pass_obj
def list_keys(settings: Settings) -> None:
    """List the keys: name, role, created (never the key)."""
    from shared.security.keyfile import list_keys as listed

    for record in listed(_keys_file(settings)):
        click.echo(f"{record.name}\t{record.role.value}\t{record.created_at or '-'}")


@keys.command(name="revoke")
@click.argument("name")
@click.pass_obj
def revoke_key(settings: Settings, name: str) -> None:
    """Revoke the key NAME: servers refuse it from their next request."""
    from shared.security.keyfile import revoke_key as revoke

    revoke(_keys_file(settings), name)
    click.echo(f"revoked key {name!r}")


def _with_flags(settings: Settings, **flags: object) -> Settings:
    # A flag given on the command line wins over its TABSERVE_* variable, and is validated.
    given = {name: value for name, value in flags.items() if value is not None}
    return settings.with_overrides(**given) if given else settings


def _run_api(settings: Settings) -> None:
    env = {**os.environ, **settings.as_env()}
    metricsdir.prepare(env, "api")
    _exec([sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf", "api.wsgi:app"],
          env)


def _exec(args: list[str], env: dict[str, str]) -> None:
    # Native thread pools at one per process unless the user says otherwise.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    sys.stdout.flush()
    os.execvpe(args[0], args, env)


if __name__ == "__main__":
    main()
