"""The broker transport (shared.jobs.broker) closes a connection whose Redis died mid-poll,
as Celery closes it on a connection loss, so that a worker reconnects instead of exiting.
Real redis-server, killed while two channels wait on BRPOP and one holds an unacked message
(the state a Celery worker with a running job and a free pool slot is in)."""

from __future__ import annotations

import contextlib

import kombu
import pytest
from kombu.simple import SimpleQueue

from shared.config import Settings
from shared.jobs import broker
from shared.jobs.queue import make_celery
from tests.servers import RedisServer


def _close_after_redis_died_mid_poll(tmp_path, transport: str) -> None:
    """What Celery's consumer does on a lost connection: collect(), then close()."""
    server = RedisServer(tmp_path / "redis")
    conn = kombu.Connection(server.url, transport=transport)
    channels = []
    try:
        for name in ("jobs", "other"):
            channel = conn.default_channel if name == "jobs" else conn.channel()
            queue = SimpleQueue(channel, name)
            queue.put({"job": name})
            queue.get(timeout=5)            # delivered, not acknowledged
            channel._brpop_start()          # waiting for the next message
            channels.append(channel)
        server.kill()
        server.proc.wait(timeout=10)
        with contextlib.suppress(Exception):  # Celery ignores what collect() raises
            conn.collect(socket_timeout=1)
        conn.close()
    finally:
        for channel in channels:  # else they try to put their messages back at exit
            channel.qos._on_collect.cancel()
        server.stop()


def test_a_connection_whose_redis_died_mid_poll_closes(tmp_path):
    _close_after_redis_died_mid_poll(tmp_path, broker.TRANSPORT)


def test_kombus_own_transport_still_fails_there(tmp_path):
    # The bug worked around: when this fails, kombu has fixed it and broker.py can go.
    with pytest.raises(AttributeError, match="hostname"):
        _close_after_redis_died_mid_poll(tmp_path, "kombu.transport.redis:Transport")


@pytest.mark.parametrize("url, used", [
    ("redis://127.0.0.1:6379/0", True),
    ("rediss://127.0.0.1:6380/0", True),
    ("sentinel://127.0.0.1:26379", False),
])
def test_celery_uses_it_for_redis_urls(url, used):
    app = make_celery(Settings().with_overrides(redis_url=url))
    assert (app.conf.broker_transport == broker.TRANSPORT) is used
    with app.connection_for_write() as connection:
        assert (connection.transport_cls == broker.TRANSPORT) is used
