"""docker-compose.yml run as local processes: Redis, the API and two worker replicas.

Each process gets the command and environment Compose resolves for its service (the image's
ENTRYPOINT, CMD and ENV from its Dockerfile where the service sets none), with only what a
container would provide mapped to this host: other services' names and ports, volume paths,
the venv, the working directory and the ports it listens on. A batch job then goes through
the API to the workers, and each image's HEALTHCHECK is run against its process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import psutil
import pytest
import redis
import requests

from shared.models.signing import SigningKeys
from shared.models.store import ModelStore
from shared.models.training import train_demo
from shared.security.keyfile import create_key
from tests import test_deploy_files as deploy
from tests.jobclient import read_result, submit, wait_job
from tests.servers import ROOT, Process, free_port, free_ports, wait_until

compose = deploy.compose  # fixture: the file as `docker-compose config` resolves it

LOOPBACK = "127.0.0.1"
REDIS_IMAGE_PORT = 6379  # what the redis image listens on
INIT = ["tini", "--"]  # the images' init; it only forwards signals and reaps children
WORKER_REPLICAS = 2
JOB_ROWS = 3000
ONLINE_ROWS = 1000  # TABSERVE_MAX_ONLINE_ROWS's default, which the compose file keeps
READY = re.compile(r"\S+@\S+ ready\.")
FAILURE = re.compile(r'"level":"(?:error|critical)"|Traceback')


@dataclass
class Image:
    """What a Dockerfile's final stage gives its containers."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    workdir: str
    healthcheck: list[str]
    healthcheck_timeout: float


def read_image(dockerfile: Path) -> Image:
    """ENTRYPOINT, CMD (exec form), ENV, WORKDIR and HEALTHCHECK of the final stage."""
    final = deploy.parse_dockerfile(dockerfile)[-1]
    env = dict(w.split("=", 1) for args in final.args_of("ENV") for w in shlex.split(args))
    options, _, check = final.args_of("HEALTHCHECK")[-1].partition("CMD ")
    timeout = re.search(r"--timeout=(\d+)s", options)
    return Image(json.loads(final.args_of("ENTRYPOINT")[-1]), json.loads(final.args_of("CMD")[-1]),
                 env, final.args_of("WORKDIR")[-1], json.loads(check),
                 float(timeout[1]) if timeout else 30.0)


def container_argv(service: dict, image: Image) -> list[str]:
    """What the container runs, less the init: Docker's ENTRYPOINT + CMD rules."""
    entrypoint, command = service.get("entrypoint"), service.get("command")
    if entrypoint is None:
        entrypoint = image.entrypoint
        command = image.cmd if command is None else command
    argv = [*entrypoint, *(command or [])]  # a service's entrypoint drops the image's CMD
    return argv[len(INIT):] if argv[:len(INIT)] == INIT else argv


@dataclass
class Mapping:
    """Where one container's names are on this host."""

    hosts: dict[str, dict[int, int]]  # other service -> its container port -> local port
    paths: dict[str, str]  # container path -> local path
    ports: dict[int, int]  # a port this container listens on -> local port

    def path(self, value: str) -> str:
        """A container path, or a colon-separated list of them, on this host."""
        mapped = []
        for part in value.split(":"):
            prefix = max((p for p in self.paths if part == p or part.startswith(p + "/")),
                         key=len, default=None)
            mapped.append(part if prefix is None else self.paths[prefix] + part[len(prefix):])
        return ":".join(mapped)

    def url(self, value: str) -> str:
        """A URL naming another service, pointed at that service's local process."""
        parts = urlsplit(value)
        if parts.hostname not in self.hosts:
            return value
        userinfo, _, _ = parts.netloc.rpartition("@")
        address = f"{LOOPBACK}:{self.hosts[parts.hostname][parts.port]}"
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))

    def address(self, value: str) -> str:
        """HOST:PORT of a listener of this container, on loopback and its local port."""
        return re.sub(r"\b(?:0\.0\.0\.0|127\.0\.0\.1|localhost):(\d+)\b",
                      lambda m: f"{LOOPBACK}:{self.ports.get(int(m[1]), m[1])}", value)

    def env(self, environ: dict[str, str]) -> dict[str, str]:
        """Variables with paths, other services' URLs and own ports mapped; the rest kept."""
        mapped = {}
        for key, value in environ.items():
            if value.startswith("/"):
                value = self.path(value)
            elif key.startswith("TABSERVE_") and "://" in value:
                value = self.url(value)
            elif key.endswith("_PORT") and value.isdigit():
                value = str(self.ports.get(int(value), value))
            elif key.endswith("_BIND") and value in ("0.0.0.0", "::"):
                value = LOOPBACK
            elif key.endswith("_BIND"):
                value = self.address(value)
            mapped[key] = value
        return mapped

    def argv(self, argv: list[str]) -> list[str]:
        """A command with `python` as this venv's and listen addresses mapped."""
        return [sys.executable if a == "python" else self.address(a) for a in argv]


@dataclass
class Local:
    """A compose service's container, as a process on this host."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    ports: dict[int, int]
    healthcheck: list[str]
    healthcheck_timeout: float


def write_secrets(compose: dict, root: Path, prometheus_key: str) -> dict[str, str]:
    """The compose secrets as files, as docs/deploy.md makes them: container path -> file."""
    import hashlib
    import secrets

    root.mkdir()
    content = {
        "redis_users": "user default on #"
        + hashlib.sha256(deploy.REDIS_PASSWORD.encode()).hexdigest() + " ~* &* +@all\n",
        "model_signing_key": secrets.token_hex(32) + "\n",
        "prometheus_api_key": prometheus_key + "\n",
    }
    assert set(compose["secrets"]) == set(content)
    paths = {}
    for name, text in content.items():
        (root / name).write_text(text)
        paths[f"/run/secrets/{name}"] = str(root / name)
    return paths


def localize(compose: dict, service_name: str, name: str, hosts: dict[str, dict[int, int]],
             volumes: dict[str, Path], root: Path, secrets: dict[str, str],
             binds: dict[str, Path] | None = None) -> Local:
    """One replica of a built service, mapped to this host (`binds`: a bind mount's host
    directory -> the local one standing for it)."""
    service = compose["services"][service_name]
    image = read_image(Path(service["build"]["context"]) / service["build"]["dockerfile"])
    listens = [p["target"] for p in service.get("ports") or []] + \
        [int(p) for p in service.get("expose") or []]
    paths = {v["target"]: str(volumes[v["source"]]) for v in service["volumes"]
             if v["type"] == "volume"}
    paths.update({v["target"]: str((binds or {})[v["source"]]) for v in service["volumes"]
                  if v["type"] == "bind"})
    paths[image.env["VIRTUAL_ENV"]] = sys.prefix
    paths[image.workdir] = str(ROOT)  # the Dockerfile copies the sources there
    paths.update(secrets)
    mapping = Mapping(hosts, paths, dict(zip(listens, free_ports(len(listens)), strict=True)))
    (root / "home").mkdir(parents=True)
    (root / "cwd").mkdir()  # the container's WORKDIR, but holding nothing
    env = {"PATH": os.environ["PATH"], "HOME": str(root / "home"), "LANG": "C.UTF-8"}
    for key, value in mapping.env(image.env).items():
        env[key] = string.Template(value).safe_substitute(env)  # ENV PATH=/opt/venv/bin:$PATH
    env.update(mapping.env(service.get("environment") or {}))
    return Local(name, mapping.argv(container_argv(service, image)), env, root / "cwd",
                 mapping.ports, mapping.argv(image.healthcheck), image.healthcheck_timeout)


@pytest.fixture
def stack():
    """Stops every process the test started, in reverse order, even if one stop fails."""
    with contextlib.ExitStack() as exits:
        yield exits


def start(stack: contextlib.ExitStack, args: list[str], env: dict[str, str], cwd: Path,
          log: Path) -> Process:
    proc = Process(args, env, log, cwd)
    stack.callback(proc.stop)
    return proc


def wait_for(proc: Process, check: Callable[[], object], what: str) -> None:
    """Wait for check() while the process lives; fail with its log otherwise."""
    try:
        wait_until(lambda: not proc.alive() or check(), 60, what, interval=0.1)
    except TimeoutError as exc:
        pytest.fail(f"{exc}:\n{proc.log()}")
    assert proc.alive(), f"{what}: exited {proc.proc.returncode}:\n{proc.log()}"


def start_redis(compose: dict, stack: contextlib.ExitStack, root: Path,
                secrets: dict[str, str]) -> int:
    """The redis service's command (its ACL file as a secret) on a loopback port."""
    command = [secrets.get(a, a) for a in compose["services"]["redis"]["command"]]
    assert command[0] == "redis-server"
    assert shutil.which(command[0]), "redis-server is not installed: run 'make setup'"
    port = free_port()
    root.mkdir()
    env = {"PATH": os.environ["PATH"], **(compose["services"]["redis"].get("environment") or {})}
    proc = start(stack, [*command, "--bind", LOOPBACK, "--port", str(port), "--dir", str(root)],
                 env, root, root / "redis.log")
    client = redis.Redis(port=port, password=deploy.REDIS_PASSWORD)
    wait_for(proc, client.ping, "redis-server")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    return port


def run_healthcheck(local: Local, **env: str) -> int:
    result = subprocess.run(local.healthcheck, env={**local.env, **env}, cwd=local.cwd,
                            timeout=local.healthcheck_timeout + 10, capture_output=True,
                            check=False)
    return result.returncode


def process_tree(proc: Process) -> list[psutil.Process]:
    parent = psutil.Process(proc.pid)
    return [parent, *parent.children(recursive=True)]


def connections(proc: Process, status: str) -> list:  # psutil's sconn tuples
    return [c for p in process_tree(proc) for c in p.net_connections("inet")
            if c.status == status]


def predict_online(url: str, rows: list[dict], headers: dict[str, str]) -> pd.DataFrame:
    """/predict over rows, in requests of at most ONLINE_ROWS."""
    frames = []
    for first in range(0, len(rows), ONLINE_ROWS):
        batch = rows[first:first + ONLINE_ROWS]
        r = requests.post(url + "/predict", json={"instances": batch}, timeout=60,
                          headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        frames.append(pd.DataFrame({"prediction": body["predictions"],
                                    **{f"probability_{c}": [p[c] for p in body["probabilities"]]
                                       for c in body["probabilities"][0]}}))
    return pd.concat(frames, ignore_index=True)


def worker_ready(proc: Process, local: Local) -> Callable[[], object]:
    """Whether Celery logged it is ready and the metrics exporter answers."""
    metrics = f"http://{LOOPBACK}:{next(iter(local.ports.values()))}/metrics"
    return lambda: READY.search(proc.log()) and requests.get(metrics, timeout=1).ok


def start_services(compose: dict, stack: contextlib.ExitStack, tmp: Path) -> tuple:
    """Redis, the API and the worker replicas, each started and ready."""
    volumes = {name: tmp / "volumes" / name for name in compose["volumes"]}
    for directory in volumes.values():
        directory.mkdir(parents=True)
    # API keys are on: the keys file's directory (deploy/keys on the host) stands here, with
    # the keys docs/deploy.md creates first: an admin key, and a read key for Prometheus.
    keys_dir = tmp / "keys"
    keys_dir.mkdir()
    api_keys = {role: create_key(keys_dir / "api-keys.json", name, role)
                for name, role in (("admin", "admin"), ("prometheus", "read"))}
    secrets = write_secrets(compose, tmp / "secrets", api_keys["read"])
    hosts = {"redis": {REDIS_IMAGE_PORT: start_redis(compose, stack, tmp / "redis", secrets)}}
    api = localize(compose, "api", "api", hosts, volumes, tmp / "api", secrets,
                   {str(deploy.KEYS_DIR): keys_dir})
    artifacts = Path(api.env["TABSERVE_ARTIFACTS_DIR"])
    keys = SigningKeys.from_file(Path(api.env["TABSERVE_MODEL_SIGNING_KEY_FILE"]), artifacts)
    train_demo(ModelStore(artifacts, keys=keys))  # signed, as `tabserve train` signs it
    workers = [localize(compose, "worker", f"worker-{i + 1}", hosts, volumes, tmp / f"w{i + 1}",
                        secrets) for i in range(WORKER_REPLICAS)]
    procs = {local.name: start(stack, local.argv, local.env, local.cwd, tmp / f"{local.name}.log")
             for local in (api, *workers)}
    api_url = f"http://{LOOPBACK}:{next(iter(api.ports.values()))}"
    wait_for(procs["api"], lambda: requests.get(api_url + "/healthz", timeout=1).ok, "api")
    for local in workers:
        wait_for(procs[local.name], worker_ready(procs[local.name], local), local.name)
    return api, api_url, workers, procs, hosts["redis"][REDIS_IMAGE_PORT], api_keys


def test_compose_services_run_as_local_processes(compose, stack, tmp_path, demo_data):
    api, api_url, workers, procs, redis_port, api_keys = start_services(compose, stack,
                                                                         tmp_path)
    admin = {"Authorization": f"Bearer {api_keys['admin']}"}

    ready = requests.get(api_url + "/readyz", timeout=10).json()
    assert ready["ready"] and ready["checks"]["redis"]["status"] == "ok", ready
    for local in (api, *workers):
        assert run_healthcheck(local) == 0, f"HEALTHCHECK of {local.name} failed"
        listening = {c.laddr.ip for c in connections(procs[local.name], psutil.CONN_LISTEN)}
        assert listening == {LOOPBACK}, f"{local.name} listens on {listening}"
    for local in workers:
        peers = {c.raddr.port for c in connections(procs[local.name], psutil.CONN_ESTABLISHED)}
        assert redis_port in peers, f"{local.name} is not connected to redis"
    assert run_healthcheck(workers[0], TABSERVE_WORKER_METRICS_PORT=str(free_port())) != 0

    # Keys are on: nothing but the health checks without one; Prometheus's key scrapes.
    assert requests.get(api_url + "/models", timeout=10).status_code == 401
    assert requests.get(api_url + "/metrics", timeout=10).status_code == 401
    scrape = {"Authorization": f"Bearer {api_keys['read']}"}  # Prometheus's secret
    assert requests.get(api_url + "/metrics", headers=scrape, timeout=10).status_code == 200

    names, X = demo_data
    frame = pd.concat([pd.DataFrame(X, columns=names)] * -(-JOB_ROWS // len(X)),
                      ignore_index=True)[:JOB_ROWS]
    assert submit(api_url, b"a\n1\n", "csv").status_code == 401
    r = submit(api_url, frame.to_csv(index=False).encode(), "csv", headers=admin)
    assert r.status_code == 202, r.text
    job = wait_job(api_url, r.json()["id"], timeout=45, headers=admin)
    assert job["status"] == "succeeded", job
    result, _ = read_result(api_url, job["id"], headers=admin)
    assert result["row"].tolist() == list(range(JOB_ROWS))
    expected = predict_online(api_url, frame.to_dict("records"), admin)
    pd.testing.assert_frame_equal(result[list(expected.columns)], expected, check_exact=True)

    for name, proc in procs.items():
        assert proc.alive(), f"{name} exited:\n{proc.log()}"
        assert not FAILURE.search(proc.log_path.read_text(errors="replace")), proc.log()
