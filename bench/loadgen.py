"""Closed-loop HTTP load on 127.0.0.1: wrk with bench/post.lua, or a Python asyncio fallback.

Both POST the bodies of a file (one JSON document per line) in turn, from `concurrency`
connections, each sending its next request when the previous answer is in, for a fixed time.
With `close`, every request carries `Connection: close`, so each one opens a connection.

    .venv/bin/python -m bench.loadgen URL BODIES_FILE [-c 16] [-d 5] [--close] [--tool python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

LUA = Path(__file__).with_name("post.lua")
WRK_TIMEOUT_S = 30  # well above any latency measured; a slower answer counts as an error


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
    payloads = [_request(host, port, target, line.encode(), close)
                for line in bodies.read_text().splitlines() if line]
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


def _request(host: str, port: int, target: str, body: bytes, close: bool) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    head = (f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{connection}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


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
