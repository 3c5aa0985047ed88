"""kombu's Redis transport, with a channel that can be closed after Redis died mid-poll.

When a worker's broker connection is lost, Celery (5.7) collects the connection and then
closes it. kombu's Redis channel, closed while a BRPOP is outstanding, first reads that
BRPOP's reply: on a dead socket the read raises, the channel is left open, and collect()
then detaches the transport from its connection. The second close (connection.close())
tries again and fails with AttributeError ('NoneType' object has no attribute 'hostname'),
which Celery does not expect: the worker exits with "Unrecoverable error" instead of
reconnecting. It happens when the subscription socket reports the loss before the BRPOP
socket does (tests/test_broker.py makes it happen on purpose).

This channel treats a BRPOP reply lost with its connection as no reply, so the first close
finishes (the unacknowledged messages are put back if Redis can still be reached, else
Redis restores them by their visibility timeout when it returns). And a channel asked for a
new Redis connection after its transport was detached raises a connection error, which
every teardown path of kombu and Celery ignores, instead of the AttributeError.
"""

from __future__ import annotations

import logging
from queue import Empty

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger(__name__)

TRANSPORT = "shared.jobs.broker:Transport"
SCHEMES = ("redis", "rediss")   # the URLs this transport is for (not sentinel://)


class Channel(kombu_redis.Channel):
    def close(self) -> None:
        if self._in_poll and not self.closed:
            try:
                self._brpop_read()
            except Empty:
                pass
            except self.connection_errors as exc:
                # kombu's _brpop_read has already dropped the connection and the poll.
                logger.info("broker: the outstanding BRPOP was lost with its connection (%s)",
                            exc)
        super().close()

    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was already closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
