"""The /predict view in-process (Flask test client, no server, monitoring off): what one
request of one row or 100 rows costs from body to answer. Run it on two checkouts to compare
a change to the view's hot path:

    PYTHONPATH=$PWD python -m bench.predict_view [requests]
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from api import create_app
from shared.config import Settings
from shared.models.store import ModelStore
from shared.models.training import train_demo


def main(requests: int = 3000) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-view-"))
    train_demo(ModelStore(root))
    settings = Settings(artifacts_dir=root, data_dir=str(root / "data"), monitoring=False,
                        default_model="breast-cancer", redis_url="redis://127.0.0.1:1/0")
    app = create_app(settings)
    logging.getLogger().setLevel(logging.WARNING)
    client = app.test_client()
    names = app.extensions["tabserve"].models.resolve(None, "breast-cancer").validator.names
    row = dict.fromkeys(names, 1.0)
    for label, body in (("1 row", {"features": row}), ("100 rows", {"instances": [row] * 100})):
        payload = orjson.dumps(body)
        times = []
        for i in range(requests + 200):
            t0 = time.perf_counter_ns()
            r = client.post("/predict", data=payload, content_type="application/json")
            if i >= 200:
                times.append((time.perf_counter_ns() - t0) / 1e3)
            assert r.status_code == 200, r.data
        times.sort()
        print(f"{label}: median {statistics.median(times):.1f} us, "
              f"p99 {times[int(len(times) * 0.99)]:.1f} us ({requests} requests)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
