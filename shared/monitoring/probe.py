"""The container health check (`tabserve healthcheck`): GET /healthz from the API this host
(or container) runs, on the address it actually listens on.

`tabserve api` and `tabserve serve` start gunicorn with the resolved address in its
environment (TABSERVE_BIND: a --bind flag, the variable, or serve's SageMaker port), so the
check reads it from the running API's /proc entry instead of guessing from its own settings,
which know neither the command's flags nor which of the two commands the container runs.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
from pathlib import Path

PROC = Path("/proc")
APP_ARG = b"api.wsgi:app"  # in gunicorn's argv, and in its title when setproctitle renames it
BIND_VAR = b"TABSERVE_BIND="


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (a `unix:PATH` bind)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def _parent(entry: Path) -> int:
    """A process's parent pid, from /proc/<pid>/stat (after the parenthesised name)."""
    stat = (entry / "stat").read_bytes()
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def api_binds(proc: Path = PROC) -> list[str]:
    """The addresses of the tabserve APIs that are this container's main process (their
    TABSERVE_BIND), without duplicates; [] when none runs or /proc cannot be read.

    Only a gunicorn master that is PID 1 or a child of PID 1 (the container's init, tini)
    counts: in a container that is the API; on a host it is a service the init started, never
    another user's or another test's server started from a shell."""
    binds: set[str] = set()
    try:
        entries = [e for e in proc.iterdir() if e.name.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            if APP_ARG not in (entry / "cmdline").read_bytes():
                continue
            if entry.name != "1" and _parent(entry) != 1:
                continue  # a worker (its master answers), or not the container's API
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        binds.update(v[len(BIND_VAR):].decode(errors="replace")
                     for v in environ if v.startswith(BIND_VAR))
    return sorted(binds)


def local_address(bind: str) -> tuple[str, int]:
    """Where to reach a HOST:PORT bind from the same host: a wildcard host is loopback."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        raise ValueError(f"{bind!r} is not HOST:PORT or unix:PATH")
    if not host:  # ":8000": every interface
        return "127.0.0.1", int(port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a host name
        return host, int(port)
    if address.is_unspecified:
        host = "::1" if address.version == 6 else "127.0.0.1"
    return host, int(port)


def probe(bind: str, path: str = "/healthz", timeout: float = 4.0) -> int:
    """GET `path` from the API listening on `bind`; the answer's status (raises OSError when
    nothing answers)."""
    connection: http.client.HTTPConnection
    if bind.startswith("unix:"):
        connection = UnixHTTPConnection(bind[len("unix:"):], timeout)
    else:
        host, port = local_address(bind)
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()
