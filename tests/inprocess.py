"""The API and the `tabserve` command in process: `create_app(settings)` for its test client
without touching the test process's logging, and a command run by click's test runner."""

from __future__ import annotations

import logging
import os
import subprocess
import traceback

from click.testing import CliRunner
from flask import Flask

from api import create_app
from shared.config import Settings


def inprocess_app(settings: Settings) -> Flask:
    """create_app(settings) with pytest's root-logger handlers and level put back: the app
    sets up JSON logging on the root logger, which would otherwise stay for every later test
    of the process (and hide log lines from caplog)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return create_app(settings)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def run_cli(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    """`tabserve ARGS` run in this process by click's test runner (no interpreter start, no
    imports again: the error tables run dozens of commands), in the environment settings
    give and no other TABSERVE_*: the exit status, stdout and stderr a subprocess would
    give, an exception the command let out written to stderr as its traceback."""
    from cli.main import main

    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("TABSERVE_")}
    env.update(settings.as_env())
    result = CliRunner().invoke(main, args, env=env)
    stderr = result.stderr
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(["tabserve", *args], result.exit_code, result.stdout,
                                       stderr)
