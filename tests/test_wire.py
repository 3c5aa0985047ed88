"""The queue accepts JSON only: a pickled message pushed into it by anyone who reaches Redis
runs nothing in a real worker, and the worker goes on scoring jobs."""

from __future__ import annotations

import os
from pathlib import Path

from shared.jobs.queue import SCORE_JOB, make_celery
from tests.jobclient import submit, wait_job
from tests.servers import wait_until


class Exploit:
    """Unpickled, it would create the marker file through a shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_message_in_the_queue_runs_nothing(base_settings, redis_client, api_server,
                                                      worker, customer_frame, tmp_path):
    marker = tmp_path / "pickle-ran"
    # An attacker's producer: Celery itself, told to serialize with pickle.
    attacker = make_celery(base_settings)
    attacker.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    attacker.send_task(SCORE_JOB, args=[Exploit(marker)], queue=base_settings.queue_name,
                       serializer="pickle")
    attacker.close()

    wait_until(lambda: "Refusing to deserialize untrusted content of type pickle"
               in worker.log(), 30, "the worker to refuse the pickled message")
    wait_until(lambda: redis_client.llen(base_settings.queue_name) == 0, 10,
               "the refused message to leave the queue")
    assert not marker.exists()
    assert worker.alive()

    # The same worker still scores a real job.
    data = customer_frame.head(20).to_csv(index=False).encode()
    response = submit(api_server.url, data, "csv")
    assert response.status_code == 202, response.text
    job = wait_job(api_server.url, response.json()["id"], timeout=120)
    assert job["status"] == "succeeded", job
    assert not marker.exists()
