"""The online benchmark's scenarios: each server started alone, checked, then loaded."""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench import mlflow_serve, mlserver_serve
from bench.cpuload import OtherCPU, wait_quiet
from bench.loadgen import LoadResult, run_load
from bench.protocols import ENDPOINTS, check_protocols, endpoint_url
from shared.config import Settings
from tests.servers import ApiServer, Process, RedisServer, free_port, tabserve_env, wait_until

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MLSERVER_PARALLEL_WORKERS = (0, 1, 2)  # 0: inference in its HTTP process; 1: its default
BUSY_PERCENT = 10.0  # other processes' CPU during a run above which it is repeated
ATTEMPTS = 3  # runs at most per concurrency; the one with the least other CPU is kept


@dataclass
class Config:
    duration: float
    warmup: float
    concurrency: list[int]
    workers: int
    skip_mlflow: bool
    skip_mlserver: bool
    tool: str
    raw_calls: int
    wait_quiet: float


@dataclass
class ModelCase:
    """One model under test: its label, tabserve reference, fitted object and pickle."""

    label: str
    ref: str
    algorithm: str
    required_ratio: float  # tabserve req/s over mlflow's at concurrency 16
    model: Any = None
    pickle_path: Path | None = None
    served: Any = None  # the model as tabserve loads it (shared.models.loading.LoadedModel)


@dataclass
class Results:
    models: list[tuple[str, float]] = field(default_factory=list)  # label, required ratio
    raw: dict[str, dict[str, float]] = field(default_factory=dict)
    runs: dict[tuple[str, str], list[LoadResult]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # label -> protocol endpoint -> its req/s over /predict's in each interleaved round
    protocol_rounds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # label -> (tabserve's /predict req/s, hello-world's req/s) in each interleaved round
    hello_rounds: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    other_cpu_before: float = 0.0  # % of the machine other processes used before the run
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)  # os.getloadavg() at the start
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)  # and at the end


def sweep(url: str, bodies: Path, config: Config, results: Results, what: str,
          close: bool = True) -> list[LoadResult]:
    """Warm up, then a run per concurrency (`close`: a connection per request). A run during
    which other processes took the CPU is repeated; the quietest attempt is kept."""
    _settle(run_load(config.tool, url, bodies, max(config.concurrency), config.warmup, close))
    runs = []
    for c in config.concurrency:
        kept: LoadResult | None = None
        for attempt in range(ATTEMPTS):
            with OtherCPU() as other:
                r = run_load(config.tool, url, bodies, c, config.duration, close)
            r.other_cpu = other.percent
            _settle(r)
            print(f"{what} c={c}: {r.rps:.0f} req/s p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} "
                  f"ms errors {r.errors} {r.error_kinds or ''}(other CPU {r.other_cpu:.0f}%)",
                  flush=True)
            if kept is None or r.other_cpu < (kept.other_cpu or 0.0):
                kept = r
            if r.other_cpu <= BUSY_PERCENT or attempt == ATTEMPTS - 1:
                break
            wait_quiet(BUSY_PERCENT, min(60.0, config.wait_quiet))
        assert kept is not None
        runs.append(kept)
    return runs


def _settle(run: LoadResult) -> LoadResult:
    """Let the server drain what the load generator left queued when it stopped: the
    requests of closed connections are still answered, taking about one latency."""
    time.sleep(min(10.0, 0.5 + 1.5 * run.p50_ms / 1000))
    return run


def bench_tabserve(work: Path, cases: list[ModelCase], X: np.ndarray,
                   bodies: dict[str, Path], config: Config, results: Results) -> None:
    """`tabserve api` (gunicorn) serving both models, each loaded in turn by model ref:
    /predict, then on the same process the protocol endpoints (bench/protocols.py)."""
    redis = RedisServer(work / "redis")  # as deployed: /predict logs predictions to Redis
    settings = Settings(artifacts_dir=work / "artifacts", data_dir=str(work / "data"),
                        redis_url=redis.url, default_model=cases[0].ref)
    api = None
    try:
        api = ApiServer(tabserve_env(settings.as_env()), work, workers=config.workers)
        for case in cases:
            url = f"{api.url}/predict?model={case.ref}"
            _check_tabserve(url, case.model, X, bodies["tabserve"])
            check_protocols(api.url, case.ref, case.model, X, bodies)
            results.runs[(case.label, "tabserve")] = sweep(url, bodies["tabserve"], config,
                                                           results, f"tabserve {case.label}")
            results.runs[(case.label, "tabserve-keepalive")] = sweep(
                url, bodies["tabserve"], config, results, f"tabserve-keepalive {case.label}",
                close=False)
            for endpoint in ENDPOINTS:
                results.runs[(case.label, endpoint.key)] = sweep(
                    endpoint_url(api.url, endpoint, case.ref), bodies[endpoint.bodies], config,
                    results, f"tabserve {endpoint.key} {case.label}")
            results.protocol_rounds[case.label] = protocol_rounds(api.url, url, case.ref,
                                                                  bodies, config)
            if case is cases[0]:  # the demo's share is the target; the forest's, reference
                results.hello_rounds[case.label] = hello_rounds(work, url, bodies["tabserve"],
                                                                config)
    finally:
        if api is not None:
            api.stop()
        redis.stop()


PROTOCOL_ROUNDS = 5
HELLO_ROUNDS = 4


def hello_rounds(work: Path, predict_url: str, bodies: Path,
                 config: Config) -> list[tuple[float, float]]:
    """tabserve's /predict and hello-world, keep-alive at concurrency 16, in rounds that
    run the two back to back (who goes first alternating), while tabserve's API stays up and
    idle beside hello-world: (tabserve req/s, hello-world req/s) per round. The sweeps
    measure hello-world minutes before and after tabserve, and this machine's speed drifts
    by a third within half an hour; a round's two runs are seconds apart."""
    hello = HelloServer(work, config.workers)
    pairs: list[tuple[float, float]] = []
    try:
        hello_url = hello.url + "/predict"
        _settle(run_load(config.tool, hello_url, bodies, 16, config.warmup, False))
        for rnd in range(HELLO_ROUNDS):
            order = [("tabserve", predict_url), ("hello", hello_url)]
            if rnd % 2:
                order.reverse()
            rps: dict[str, float] = {}
            for name, url in order:
                rps[name] = _settle(run_load(config.tool, url, bodies, 16, config.duration,
                                             False)).rps
            pairs.append((rps["tabserve"], rps["hello"]))
            print(f"hello round {rnd + 1}: /predict {rps['tabserve']:.0f} req/s, hello-world "
                  f"{rps['hello']:.0f} req/s: {rps['tabserve'] / rps['hello']:.0%}", flush=True)
    finally:
        hello.stop()
    return pairs


def protocol_rounds(base: str, predict_url: str, ref: str, bodies: dict[str, Path],
                    config: Config) -> dict[str, list[float]]:
    """Each protocol endpoint's req/s over /predict's at concurrency 16, in rounds that run
    /predict and every endpoint back to back: a ratio of two runs seconds apart, where the
    sweeps' runs are minutes apart and the machine's drift falls on them. The order
    rotates from round to round, so that no endpoint always runs last in its round."""
    ratios: dict[str, list[float]] = {e.key: [] for e in ENDPOINTS}
    runs = [("/predict", predict_url, bodies["tabserve"]),
            *((e.key, endpoint_url(base, e, ref), bodies[e.bodies]) for e in ENDPOINTS)]
    for rnd in range(PROTOCOL_ROUNDS):
        shift = rnd % len(runs)
        rps = {key: run_load(config.tool, url, body, 16, config.duration, True).rps
               for key, url, body in runs[shift:] + runs[:shift]}
        predict = rps["/predict"]
        for endpoint in ENDPOINTS:
            ratios[endpoint.key].append(rps[endpoint.key] / predict if predict else 0.0)
        print(f"protocol round {rnd + 1} {ref}: /predict {predict:.0f} req/s; " + ", ".join(
            f"{k} {v[-1]:.2f}x" for k, v in ratios.items()), flush=True)
    return ratios


def _check_tabserve(url: str, model: Any, X: np.ndarray, bodies: Path) -> None:
    lines = bodies.read_text().splitlines()
    for i in range(0, len(X), 57):
        r = requests.post(url, data=lines[i], timeout=30,
                          headers={"Content-Type": "application/json"})
        r.raise_for_status()
        body = r.json()
        expected = model.predict_proba(X[i:i + 1])[0]
        assert body["prediction"] == int(model.classes_[expected.argmax()]), (i, body)
        assert np.allclose([body["probabilities"][str(c)] for c in model.classes_], expected)


class HelloServer(Process):
    """bench/hello_app.py under gunicorn with api/gunicorn_conf.py: tabserve's settings."""

    def __init__(self, log_dir: Path, workers: int, extra: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = tabserve_env({"TABSERVE_BIND": f"127.0.0.1:{self.port}",
                            "TABSERVE_WEB_WORKERS": str(workers)}, {**ONE_THREAD, **(extra or {})})
        super().__init__([sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf",
                          "bench.hello_app:app"], env, log_dir / f"hello-{self.port}.log")
        wait_until(lambda: requests.get(self.url + "/predict", timeout=1).ok, 30, "hello app")


def bench_hello(work: Path, bodies: Path, config: Config, results: Results,
                key: str = "hello") -> None:
    """The hello-world app under the same gunicorn settings, with the same bodies: a
    connection per request (`key`), then keep-alive connections (`key`-keepalive)."""
    hello = HelloServer(work, config.workers)
    try:
        results.runs[("", key)] = sweep(hello.url + "/predict", bodies, config, results, key)
        results.runs[("", f"{key}-keepalive")] = sweep(
            hello.url + "/predict", bodies, config, results, f"{key}-keepalive", close=False)
    finally:
        hello.stop()


def bench_mlflow(work: Path, cases: list[ModelCase], X: np.ndarray,
                 bodies: dict[str, Path], config: Config, results: Results) -> None:
    """`mlflow models serve` of each model; a failure is recorded in the notes, not raised."""
    try:
        python = mlflow_serve.ensure_venv(mlflow_serve.VENV.parent / "mlflow-install.log")
        results.versions.update({f"mlflow venv: {k}": v for k, v in
                                 mlflow_serve.installed_versions(python).items()})
    except mlflow_serve.MlflowUnavailableError as exc:
        results.notes.append(f"mlflow: could not be installed: {exc}")
        return
    env = tabserve_env({}, ONE_THREAD)  # the same one model thread per worker as tabserve
    for case in cases:
        server = None
        try:
            assert case.pickle_path is not None
            saved_with = mlflow_serve.save_model(python, case.pickle_path,
                                                 work / f"mlflow-{case.ref}")
            results.notes.append(f"mlflow, {case.label}: saved with `{saved_with}` from the "
                                 "pickle tabserve serves; default pyfunc predict (labels).")
            server = mlflow_serve.MlflowServer(python, work / f"mlflow-{case.ref}", work,
                                               config.workers, env)
            url = server.url + "/invocations"
            _check_mlflow(url, case.model, X, bodies)
            for key, body_kind, close in (("mlflow", "mlflow", True),
                                          ("mlflow-inputs", "mlflow-inputs", True),
                                          ("mlflow-keepalive", "mlflow", False)):
                results.runs[(case.label, key)] = sweep(url, bodies[body_kind], config,
                                                        results, f"{key} {case.label}", close)
            server.stop()
            # As a user starts it: no thread pinning, so the model's native threads (XGBoost
            # uses every core) run in each of the workers. For reference; not in the ratios.
            shipped = {k: v for k, v in tabserve_env({}).items() if k not in ONE_THREAD}
            server = mlflow_serve.MlflowServer(python, work / f"mlflow-{case.ref}", work,
                                               config.workers, shipped)
            results.runs[(case.label, "mlflow-shipped")] = sweep(
                server.url + "/invocations", bodies["mlflow"], config, results,
                f"mlflow-shipped {case.label}", True)
        except (mlflow_serve.MlflowUnavailableError, AssertionError,
                requests.RequestException) as exc:
            results.notes.append(f"mlflow, {case.label}: not measured: {exc}")
        finally:
            if server is not None:
                server.stop()


def _check_mlflow(url: str, model: Any, X: np.ndarray, bodies: dict[str, Path]) -> None:
    for kind in ("mlflow", "mlflow-inputs"):
        lines = bodies[kind].read_text().splitlines()
        for i in range(0, len(X), 57):
            r = requests.post(url, data=lines[i], timeout=30,
                              headers={"Content-Type": "application/json"})
            assert r.ok, f"mlflow answered {r.status_code} to {kind}: {r.text[:500]}"
            assert r.json()["predictions"] == model.predict(X[i:i + 1]).tolist(), (i, r.text)


def bench_mlserver(work: Path, cases: list[ModelCase], X: np.ndarray, bodies: Path,
                   config: Config, results: Results) -> None:
    """`mlserver start` serving each model with mlserver-sklearn, once per parallel_workers
    setting; a failure is recorded in the notes, not raised."""
    try:
        python = mlserver_serve.ensure_venv(mlserver_serve.VENV.parent / "mlserver-install.log")
        results.versions.update({f"mlserver venv: {k}": v for k, v in
                                 mlserver_serve.installed_versions(python).items()})
    except mlserver_serve.MlserverUnavailableError as exc:
        results.notes.append(f"mlserver: could not be installed: {exc}")
        return
    repository = _mlserver_repository(work, cases)
    names = [p.name for p in repository.iterdir() if p.is_dir()]
    env = tabserve_env({}, ONE_THREAD)  # the same one model thread per process as tabserve
    checked = False
    for workers in MLSERVER_PARALLEL_WORKERS:
        server = None
        try:
            server = mlserver_serve.MlserverServer(python, repository, work, workers, names,
                                                   env)
            if not checked:  # once, on the first server that starts
                _check_mlserver(server, cases, X, bodies, results)
                checked = True
            for case, (suffix, close) in itertools.product(cases, (("", True),
                                                                  ("-keepalive", False))):
                results.runs[(case.label, f"mlserver-pw{workers}{suffix}")] = sweep(
                    server.infer_url(case.algorithm), bodies, config, results,
                    f"mlserver-pw{workers}{suffix} {case.label}", close)
        except (mlserver_serve.MlserverUnavailableError, AssertionError,
                requests.RequestException) as exc:
            results.notes.append(f"mlserver, parallel_workers={workers}: not measured: {exc}")
        finally:
            if server is not None:
                server.stop()


def _mlserver_repository(work: Path, cases: list[ModelCase]) -> Path:
    """A folder per model: the pickle tabserve serves under mlserver-sklearn (measured), and
    the XGBoost model's booster as JSON under mlserver-xgboost (checked only)."""
    repository = work / "mlserver-models"
    for case in cases:
        assert case.pickle_path is not None
        mlserver_serve.add_model(repository, case.algorithm, mlserver_serve.SKLEARN_RUNTIME,
                                 case.pickle_path)
        if case.algorithm == "xgboost":
            booster = work / "xgboost-booster.json"
            case.model.save_model(booster)
            mlserver_serve.add_model(repository, "xgboost-native",
                                     mlserver_serve.XGBOOST_RUNTIME, booster)
    return repository


def _check_mlserver(server: mlserver_serve.MlserverServer, cases: list[ModelCase],
                    X: np.ndarray, bodies: Path, results: Results) -> None:
    """MLServer's predict_proba equals the in-process model's (which tabserve's was checked
    against) on every 57th row, for each runtime."""
    lines = bodies.read_text().splitlines()
    served = [(case.algorithm, case) for case in cases]
    served += [("xgboost-native", case) for case in cases if case.algorithm == "xgboost"]
    for name, case in served:
        worst = 0.0
        for i in range(0, len(X), 57):
            r = requests.post(server.infer_url(name), data=lines[i], timeout=30,
                              headers={"Content-Type": "application/json"})
            assert r.ok, f"mlserver answered {r.status_code} for {name}: {r.text[:500]}"
            out = r.json()["outputs"][0]
            got = np.array(out["data"]).reshape(out["shape"])
            expected = case.model.predict_proba(X[i:i + 1])
            assert np.allclose(got, expected), (name, i, got, expected)
            worst = max(worst, float(np.abs(got - expected).max()))
        results.notes.append(f"mlserver, model `{name}` ({case.label}): predict_proba checked "
                             f"against the in-process model on {len(range(0, len(X), 57))} "
                             f"rows, largest difference {worst:g}.")
