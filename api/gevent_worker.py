"""gunicorn's gevent worker, with keep-alive connections taking turns.

gunicorn's own GeventWorker serves a keep-alive connection's next request as soon as it can
read it without waiting. A client that sends its next request at once (a pooled client, a
pipelining one) then keeps the process's event loop, and the process's other connections
wait: wrk's 16 keep-alive connections saw a p99 of 0.6-2 s (docs/benchmarks.md, "Keep-alive
and the worker class"). Here each request ends with a turn for the others
(shared.cooperative.pause, a sleep on a timer), so the loop polls its sockets before this
connection's next request, and every connection with a request ready goes first.
(`gevent.sleep(0)` is not enough: the loop runs 50 such wake-ups before it polls.) wrk's p99
was 20 ms with it, and a client
pipelining 300 requests lets another connection's request through after 3 of its own
(tests/test_worker_class.py).

`TABSERVE_WEB_WORKER_CLASS=gevent` (the default) runs it: api/gunicorn_conf.py.
"""

from __future__ import annotations

import warnings
from typing import Any

from gevent.monkey import MonkeyPatchWarning
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker

from shared.cooperative import pause


class GeventWorker(_GunicornGeventWorker):
    """One event loop per process; each request ends with a turn for the others."""

    def patch(self) -> None:
        # The master imported ssl (gunicorn's own modules do) before this worker patches it,
        # and gevent warns of that in every worker's log. What holds ssl's names from then is
        # gunicorn's TLS listener, which tabserve does not use (TLS ends at a proxy,
        # docs/deploy.md); the app's modules are imported after the patch, so a rediss://
        # connection looks ssl up patched.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MonkeyPatchWarning)
            super().patch()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            pause()  # the other ready connections go first
