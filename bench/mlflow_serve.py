"""MLflow's own scoring server as a peer: its venv, the models saved from the same pickles,
and `mlflow models serve --env-manager local` on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from bench.common import OUT
from tests.servers import ROOT, Process, free_port, wait_until

MLFLOW_VERSION = "3.17.2"  # 3.18.0 was not installable here: no mlflow-skinny 3.18.0 yet
VENV = OUT / "mlflow-venv"
# The model code MLflow runs is tabserve's: these come at constraints.txt's versions.
SAME_AS_TABSERVE = ("numpy", "pandas", "scipy", "scikit-learn", "xgboost-cpu")


class MlflowUnavailableError(RuntimeError):
    """MLflow could not be installed, could not save a model, or its server did not start."""


def requirements() -> list[str]:
    """mlflow at its pin, and the numeric stack at the versions tabserve is pinned to."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name.lower() in SAME_AS_TABSERVE:
            pins[name.lower()] = f"{name}=={version}"
    return [f"mlflow=={MLFLOW_VERSION}", *(pins[n] for n in SAME_AS_TABSERVE if n in pins)]


def ensure_venv(log_path: Path) -> Path:
    """bench/out/mlflow-venv with the pinned requirements (built once); its Python."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements"
    wanted = "\n".join(requirements())
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    log_path.parent.mkdir(parents=True, exist_ok=True)  # bench/out, in a fresh checkout
    with open(log_path, "ab") as log:
        steps = [[base, "-m", "venv", "--clear", str(VENV)],
                 [str(python), "-m", "pip", "install", "--disable-pip-version-check",
                  *requirements()]]
        for step in steps:
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise MlflowUnavailableError(f"`{' '.join(step[-3:])}` failed; see {log_path}")
    stamp.write_text(wanted)
    return python


def installed_versions(python: Path) -> dict[str, str]:
    """Versions of mlflow and the numeric stack in the MLflow venv."""
    names = ["mlflow", "fastapi", "uvicorn", *SAME_AS_TABSERVE]
    code = ("import importlib.metadata as m, json, sys\n"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    if out.returncode:
        raise MlflowUnavailableError(out.stderr.strip()[-500:])
    import json

    return json.loads(out.stdout)


def save_model(python: Path, pickle_path: Path, out_dir: Path) -> str:
    """Save the pickled model as an MLflow model; returns the save call used."""
    out = subprocess.run([str(python), str(Path(__file__).with_name("mlflow_save.py")),
                          str(pickle_path), str(out_dir)], capture_output=True, text=True)
    if out.returncode:
        raise MlflowUnavailableError(f"saving {pickle_path.name} failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


class MlflowServer(Process):
    """`mlflow models serve -m DIR --env-manager local --workers N` on a free loopback port."""

    def __init__(self, python: Path, model_dir: Path, log_dir: Path, workers: int,
                 env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(env)
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"  # it runs `uvicorn`
        super().__init__(
            [str(python.parent / "mlflow"), "models", "serve", "-m", str(model_dir),
             "-h", "127.0.0.1", "-p", str(self.port), "--env-manager", "local",
             "--workers", str(workers)],
            env, log_dir / f"mlflow-{self.port}.log",
        )
        try:
            wait_until(lambda: requests.get(self.url + "/ping", timeout=1).ok, 120,
                       "mlflow models serve", interval=0.2)
        except TimeoutError:
            self.stop()
            raise MlflowUnavailableError("mlflow models serve did not start:\n"
                                         + self.log()) from None
