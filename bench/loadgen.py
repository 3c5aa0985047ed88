"""Closed-loop HTTP load on 127.0.0.1: wrk with bench/post.lua, or a Python asyncio fallback.

Both POST the bodies of a file in turn, from `concurrency` connections, each sending its next
request when the previous answer is in, for a fixed time. With `close`, every request carries
`Connection: close`, so each one opens a connection.

A bodies file holds one body per line, sent as is (a JSON document: `Content-Type:
application/json`). Two optional line forms carry what a line cannot (write_bodies writes them):
`#header NAME: VALUE` sends that header with every request of the file (a `Content-Type` one
replaces the default), and `#hex HEX` is one body given as hex digits, for bodies whose bytes
may hold a newline (V2's binary tensors). post.lua reads the same format.

    .venv/bin/python -m bench.loadgen URL BODIES_FILE [-c 16] [-d 5] [--close] [--tool python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

LUA = Path(__file__).with_name("post.lua")
WRK_TIMEOUT_S = 30  # well above any latency measured; a slower answer counts as an error
HEADER_LINE = b"#header "
HEX_LINE = b"#hex "
DEFAULT_HEADERS = {"Content-Type": "application/json"}


@dataclass
class LoadResult:
    """What one load run measured; errors are socket errors, timeouts and HTTP >= 400."""

    tool: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    error_kinds: dict[str, int] = field(default_factory=dict)
    other_cpu: float | None = None  # % of the machine other processes used meanwhile

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def write_bodies(path: Path, bodies: Iterable[bytes | str],
                 headers: dict[str, str] | None = None) -> Path:
    """A bodies file: the headers every request carries, then one body per line, hex-encoded
    where it holds a newline or is raw bytes."""
    lines = [f"#header {name}: {value}\n".encode() for name, value in (headers or {}).items()]
    for body in bodies:
        if isinstance(body, str) and "\n" not in body and not body.startswith("#"):
            lines.append(body.encode() + b"\n")
        else:
            raw = body.encode() if isinstance(body, str) else body
            lines.append(HEX_LINE + raw.hex().encode() + b"\n")
    path.write_bytes(b"".join(lines))
    return path


def read_bodies(path: Path) -> tuple[dict[str, str], list[bytes]]:
    """The headers (the default Content-Type unless the file names one) and the bodies of a
    bodies file, as post.lua reads them."""
    headers: dict[str, str] = {}
    bodies = []
    for line in path.read_bytes().split(b"\n"):
        if line.startswith(HEADER_LINE):
            name, _, value = line[len(HEADER_LINE):].decode("latin-1").partition(":")
            headers[name.strip()] = value.strip()
        elif line.startswith(HEX_LINE):
            bodies.append(bytes.fromhex(line[len(HEX_LINE):].decode("ascii")))
        elif line:
            bodies.append(line)
    named = {name.lower() for name in headers}
    defaults = {k: v for k, v in DEFAULT_HEADERS.items() if k.lower() not in named}
    return {**defaults, **headers}, bodies


def wrk_version() -> str | None:
    """wrk's version line, or None when wrk is not installed."""
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0].split(" [")[0]


def run_load(tool: str, url: str, bodies: Path, concurrency: int, seconds: float,
             close: bool) -> LoadResult:
    """One closed-loop run with `tool` ("wrk" or "python")."""
    if tool == "wrk":
        return run_wrk(url, bodies, concurrency, seconds, close)
    return asyncio.run(run_python(url, bodies, concurrency, seconds, close))


def run_wrk(url: str, bodies: Path, concurrency: int, seconds: float,
            close: bool) -> LoadResult:
    """wrk with two threads (one for a single connection): the machine has two cores."""
    threads = min(2, concurrency)
    args = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
            f"--timeout={WRK_TIMEOUT_S}s", "-s", str(LUA), url, "--", str(bodies),
            "close" if close else "keep-alive"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("WRK_RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    r = json.loads(lines[-1].removeprefix("WRK_RESULT "))
    kinds = {k: r[k] for k in ("connect", "read", "write", "timeout", "status") if r[k]}
    return LoadResult("wrk", concurrency, r["duration_us"] / 1e6, r["requests"],
                      sum(kinds.values()), r["p50_us"] / 1e3, r["p90_us"] / 1e3,
                      r["p99_us"] / 1e3, r["max_us"] / 1e3, kinds)


async def run_python(url: str, bodies: Path, concurrency: int, seconds: float,
                     close: bool) -> LoadResult:
    """The fallback generator: one asyncio task per connection, HTTP/1.1 by hand."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers, lines = read_bodies(bodies)
    payloads = [_request(host, port, target, body, close, headers) for body in lines]
    latencies: list[float] = []
    kinds: dict[str, int] = {}
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_connection(host, port, payloads[i:] + payloads[:i], deadline,
                                       latencies, kinds) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LoadResult("python", concurrency, elapsed, len(latencies) + kinds.get("status", 0),
                      sum(kinds.values()), float(p50), float(p90), float(p99), float(ms.max()),
                      kinds)


def _request(host: str, port: int, target: str, body: bytes, close: bool,
             headers: dict[str, str]) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = (f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{connection}{fields}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


async def _connection(host: str, port: int, payloads: list[bytes], deadline: float,
                      latencies: list[float], kinds: dict[str, int]) -> None:
    streams = None
    i = 0
    while time.perf_counter() < deadline:
        payload = payloads[i % len(payloads)]
        i += 1
        t0 = time.perf_counter()
        reused = streams is not None
        try:
            if streams is None:
                streams = await asyncio.open_connection(host, port)
            status, keep = await _exchange(*streams, payload)
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            if streams is not None:
                streams[1].close()
                streams = None
            if not reused:  # a kept-alive connection the server closed is retried
                kind = "connect" if isinstance(exc, ConnectionRefusedError) else "read"
                kinds[kind] = kinds.get(kind, 0) + 1
            continue
        if status >= 400:
            kinds["status"] = kinds.get("status", 0) + 1
        else:
            latencies.append(time.perf_counter() - t0)
        if not keep:
            streams[1].close()
            streams = None
    if streams is not None:
        streams[1].close()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    payload: bytes) -> tuple[int, bool]:
    writer.write(payload)
    await writer.drain()
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection") != "close"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("bodies", type=Path)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--close", action="store_true", help="a connection per request")
    parser.add_argument("--tool", choices=["wrk", "python"], default="wrk")
    args = parser.parse_args()
    result = run_load(args.tool, args.url, args.bodies, args.concurrency, args.duration,
                      args.close)
    print(json.dumps({**asdict(result), "rps": round(result.rps, 1)}))


if __name__ == "__main__":
    main()
