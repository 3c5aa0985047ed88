"""Seldon MLServer as a peer: its venv (outside tabserve's), a model repository holding the
same pickles, and `mlserver start DIR` with its own settings.json on free loopback ports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import requests

from bench.common import OUT
from tests.servers import ROOT, Process, free_port, wait_until

MLSERVER_VERSION = "1.7.1"  # the newest 1.x; it accepts tabserve's numpy/pandas/sklearn pins
VENV = OUT / "mlserver-venv"
# The model code MLServer runs is tabserve's: these come at constraints.txt's versions.
SAME_AS_TABSERVE = ("numpy", "pandas", "scipy", "scikit-learn", "xgboost-cpu")
# mlserver-xgboost requires `xgboost[scikit-learn]`: pip would put the full `xgboost` 3.2.0
# (with nvidia-nccl-cu12) over xgboost-cpu 3.2.0, the same `xgboost` module at the same
# version. It is installed without its dependencies, so the module stays xgboost-cpu's.
NO_DEPS = (f"mlserver-xgboost=={MLSERVER_VERSION}",)
SKLEARN_RUNTIME = "mlserver_sklearn.SKLearnModel"
XGBOOST_RUNTIME = "mlserver_xgboost.XGBoostModel"
# MLServer 1.7.1's parallel workers fail to start with uvloop 0.22+ (asyncio.get_event_loop()
# raises in a fresh process: SeldonIO/MLServer issue 2286); mlflow pins uvloop<0.22 for it too.
UVLOOP = "uvloop==0.21.0"
DEFAULT_PARALLEL_WORKERS = 1  # mlserver.settings.DEFAULT_PARALLEL_WORKERS in 1.7.1


class MlserverUnavailableError(RuntimeError):
    """MLServer could not be installed, or its server did not start."""


def requirements() -> list[str]:
    """mlserver and its sklearn runtime at their pins, and the numeric stack at tabserve's."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name.lower() in SAME_AS_TABSERVE:
            pins[name.lower()] = f"{name}=={version}"
    return [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}",
            UVLOOP, *(pins[n] for n in SAME_AS_TABSERVE if n in pins)]


def ensure_venv(log_path: Path) -> Path:
    """bench/out/mlserver-venv with the pinned requirements (built once); its Python."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements"
    wanted = "\n".join([*requirements(), *NO_DEPS])
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        steps = [[base, "-m", "venv", "--clear", str(VENV)], [*pip, *requirements()],
                 [*pip, "--no-deps", *NO_DEPS]]
        for step in steps:
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise MlserverUnavailableError(f"`{' '.join(step[-3:])}` failed; see {log_path}")
    stamp.write_text(wanted)
    return python


def installed_versions(python: Path) -> dict[str, str]:
    """Versions of mlserver, its runtimes, its HTTP stack and the numeric stack in its venv."""
    names = ["mlserver", "mlserver-sklearn", "mlserver-xgboost", "fastapi", "uvicorn", "uvloop",
             *SAME_AS_TABSERVE]
    code = ("import importlib.metadata as m, json, sys\n"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    if out.returncode:
        raise MlserverUnavailableError(out.stderr.strip()[-500:])
    return json.loads(out.stdout)


def add_model(repository: Path, name: str, implementation: str, model_file: Path) -> None:
    """A model folder: the model file under its well-known name and its model-settings.json."""
    folder = repository / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ("model.pkl" if implementation == SKLEARN_RUNTIME else "model.json")
    shutil.copyfile(model_file, target)
    settings = {"name": name, "implementation": implementation,
                "parameters": {"uri": f"./{target.name}"}}
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")


class MlserverServer(Process):
    """`mlserver start DIR` with DIR/settings.json: `parallel_workers`, HTTP, gRPC and
    metrics each on a free port of 127.0.0.1, everything else at MLServer's defaults."""

    def __init__(self, python: Path, repository: Path, log_dir: Path, parallel_workers: int,
                 models: list[str], env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {"host": "127.0.0.1", "http_port": self.port, "grpc_port": free_port(),
                    "metrics_port": free_port(), "parallel_workers": parallel_workers}
        (repository / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        super().__init__([str(python.parent / "mlserver"), "start", str(repository)], env,
                         log_dir / f"mlserver-{self.port}.log", cwd=repository)
        try:  # an exited server ends the wait at once
            wait_until(lambda: not self.alive() or self._ready(models), 180, "mlserver start",
                       interval=0.2)
        except TimeoutError:
            pass
        if not self.alive() or not self._ready(models):
            log = self.log()
            self.stop()
            raise MlserverUnavailableError(f"mlserver start did not get ready:\n{log}")

    def _ready(self, models: list[str]) -> bool:
        paths = ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in models)]
        try:
            return all(requests.get(self.url + p, timeout=1).ok for p in paths)
        except requests.RequestException:
            return False

    def infer_url(self, model: str) -> str:
        return f"{self.url}/v2/models/{model}/infer"


def infer_body(row: list[float]) -> dict:
    """The V2 (Open Inference Protocol) JSON request for one row, asking for predict_proba."""
    return {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64",
                        "data": row}],
            "outputs": [{"name": "predict_proba"}]}
