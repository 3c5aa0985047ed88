"""The online prediction log against a real redis-server: it writes with a TTL, yields to job
state when Redis nears its maxmemory, and never raises when Redis is away."""

from __future__ import annotations

import os

import pytest
import redis

from shared import keys
from shared.monitoring import predictions
from shared.monitoring.metrics import build_registry
from shared.monitoring.predictions import (
    BUCKET_SECONDS,
    PredictionLog,
    lookup_online_prediction,
    new_prediction_id,
)
from tests.servers import RedisServer


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    client = redis.Redis.from_url(server.url)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def dropped(reason: str) -> float:
    value = build_registry().get_sample_value("tabserve_prediction_log_dropped_total",
                                              {"reason": reason})
    return value or 0.0


VALUE = b'{"m":"demo","v":1,"t":"classification","p":[1]}'


def add(log: PredictionLog, count: int) -> list[str]:
    ids = [new_prediction_id() for _ in range(count)]
    for pid in ids:
        log.add(pid, "demo", 1, "classification", [1])
    return ids


def test_writes_each_prediction_for_at_least_its_ttl(own_redis):
    _, client = own_redis
    log = PredictionLog(client, 3600)
    ids = add(log, 2500)  # more than one script call's batch
    assert log.flush() == 2500
    assert all(lookup_online_prediction(client, pid) == VALUE for pid in ids)
    for bucket in {pid[:8] for pid in ids}:  # a hash per 10-minute bucket of ids
        assert client.hlen(keys.prediction_bucket(bucket)) == sum(pid[:8] == bucket for pid in ids)
        assert 3590 < client.ttl(keys.prediction_bucket(bucket)) <= 3600 + BUCKET_SECONDS
    assert lookup_online_prediction(client, new_prediction_id()) is None


def test_ids_from_before_the_buckets_are_still_found(own_redis):
    _, client = own_redis
    old = os.urandom(16).hex()
    client.set(keys.online_prediction(old), VALUE, ex=60)
    assert lookup_online_prediction(client, old) == VALUE


def test_yields_when_redis_nears_its_maxmemory(own_redis, monkeypatch):
    _, client = own_redis
    monkeypatch.setattr(predictions, "MEMORY_CHECK_SECONDS", 0.0)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + used // 10))  # used is ~91% of the limit
    log = PredictionLog(client, 3600, max_memory_percent=80)
    before = dropped("redis_memory")
    ids = add(log, 3)
    assert log.flush() == 0
    assert dropped("redis_memory") - before == 3
    assert not any(lookup_online_prediction(client, pid) for pid in ids)
    # Room again (the limit raised): the next batch is written.
    client.config_set("maxmemory", str(used * 10))
    ids = add(log, 2)
    assert log.flush() == 2
    assert all(lookup_online_prediction(client, pid) == VALUE for pid in ids)


def test_redis_without_maxmemory_is_not_held_back(own_redis):
    _, client = own_redis
    assert int(client.info("memory")["maxmemory"]) == 0
    log = PredictionLog(client, 3600, max_memory_percent=1)
    add(log, 4)
    assert log.flush() == 4


def test_redis_away_drops_and_counts_without_raising(own_redis):
    server, client = own_redis
    log = PredictionLog(client, 3600)
    server.stop()
    before = dropped("redis_unavailable")
    add(log, 3)
    assert log.flush() == 0
    assert dropped("redis_unavailable") - before == 3
