"""The README, walked as a new user walks it: `tabserve run` started in an empty directory with
its defaults (relative ./artifacts and ./data, its own redis-server), then the Quickstart's
/predict and `tabserve score`, each example of "Batch jobs" in order, feedback, and a second
model trained in that directory while unpinned requests keep their model. Ctrl-C (SIGINT)
stops it all with status 0.

Only what keeps the walk off other tests' ports is set: the Redis URL and API address (free
loopback ports; `tabserve run` starts redis-server there) and no worker metrics port.
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests

from tests.servers import free_port, tabserve_env, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"
PREDICT_STEP = "1. **A prediction with curl**"
CLI_STEP = "2. **A scored file with the CLI**"


def readme_block(after: str) -> str:
    """The first ```sh block after the line that starts with `after` (dedented: a block in a
    list item is indented)."""
    text = README.read_text()
    start = text.index("\n" + after)
    block = re.search(r"```sh\n(.*?)\n[ \t]*```", text[start:], re.S)
    assert block is not None, f"no sh block after {after!r}"
    return textwrap.dedent(block.group(1))


def readme_features() -> dict[str, float]:
    """The features of the README's /predict example, as written there."""
    body = readme_block(PREDICT_STEP).split("-d '", 1)[1].split("'", 1)[0]
    return requests.models.complexjson.loads(body)["features"]


@pytest.fixture
def walk_dir(tmp_path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """`tabserve run` in an empty directory; yields its URL, the directory and environment."""
    home = tmp_path / "walk"
    home.mkdir()
    port = free_port()
    env = tabserve_env({"TABSERVE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                        "TABSERVE_BIND": f"127.0.0.1:{port}",
                        "TABSERVE_WORKER_METRICS_PORT": "0"}, {"PYTHONUNBUFFERED": "1"})
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "run"], cwd=home, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(url + "/readyz", timeout=2).ok, 180, "tabserve run")
        yield url, home, env
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            import os

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def download(url: str) -> tuple[str, bytes]:
    """`curl -OJ`: the body and the file name from Content-Disposition."""
    r = requests.get(url, timeout=60)
    assert r.status_code == 200, r.text[:500]
    match = re.search(r'filename="?([^";]+)"?', r.headers["Content-Disposition"])
    assert match, r.headers
    return match.group(1), r.content


def wait_job(url: str, job_id: str) -> dict:
    """Poll `curl -s localhost:8000/jobs/<id>` until the job is finished."""
    job: dict = {}

    def finished() -> bool:
        job.update(requests.get(f"{url}/jobs/{job_id}", timeout=10).json())
        return job["status"] in ("succeeded", "failed", "cancelled")

    wait_until(finished, 120, f"job {job_id}", interval=0.2)
    return job


def test_the_readme_as_written(walk_dir, customer_frame):
    url, home, env = walk_dir
    assert (home / "artifacts").is_dir()  # trained there, by the relative default

    # Try it: the README's /predict.
    r = requests.post(url + "/predict", json={"features": readme_features()}, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["prediction"] == 0 and answer["probabilities"]["0"] > 0.9
    assert answer["model"] == {"name": "breast-cancer", "version": 1}

    # Quickstart step 2, each line as written (the activated venv's `python` and `tabserve`
    # are this interpreter's), against this run's URL.
    cli_env = {**env, "TABSERVE_URL": url,
               "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
    for line in readme_block(CLI_STEP).splitlines():
        command = line.split("   #", 1)[0].strip()
        if not command or command.startswith(". "):
            continue
        done = subprocess.run(command, shell=True, cwd=home, env=cli_env, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    scored = pd.read_csv(home / "customers-predictions.csv")
    assert len(scored) == 569 and scored["customer"].tolist() == list(range(569))

    # Batch jobs, in the README's order: a multipart CSV with options, a Parquet body.
    customer_frame.to_csv(home / "big.csv", index=False)
    bad = customer_frame.drop(columns="customer").copy()
    bad.loc[[3, 7], "mean radius"] = np.nan  # NaN is refused: two rows for errors
    bad.to_parquet(home / "big.parquet", index=False)
    with open(home / "big.csv", "rb") as fh:
        r = requests.post(url + "/jobs", files={"file": ("big.csv", fh)},
                          data={"id_column": "customer", "output_format": "parquet"},
                          timeout=60)
    assert r.status_code == 202, r.text
    csv_job = r.json()["id"]
    r = requests.post(url + "/jobs?model=breast-cancer:1&on_error=skip",
                      data=(home / "big.parquet").read_bytes(), timeout=60,
                      headers={"Content-Type": "application/vnd.apache.parquet"})
    assert r.status_code == 202, r.text
    parquet_job = r.json()["id"]

    job = wait_job(url, csv_job)
    assert job["status"] == "succeeded", job
    name, content = download(f"{url}/jobs/{csv_job}/result")
    assert name == "big-predictions.parquet"
    result = pq.read_table(io.BytesIO(content)).to_pandas()
    assert list(result["customer"]) == list(customer_frame["customer"])

    job = wait_job(url, parquet_job)
    assert job["status"] == "succeeded", job
    name, content = download(f"{url}/jobs/{parquet_job}/result")
    assert name.endswith("-predictions.parquet")
    assert len(pq.read_table(io.BytesIO(content))) == len(bad) - 2
    name, content = download(f"{url}/jobs/{parquet_job}/errors")
    assert name.endswith("-errors.csv")
    assert sorted(pd.read_csv(io.BytesIO(content))["row"]) == [3, 7]

    r = requests.get(url + "/jobs?limit=20&status=running", timeout=10)
    assert r.status_code == 200 and isinstance(r.json()["jobs"], list)

    # Cancel (or delete a finished job).
    with open(home / "big.csv", "rb") as fh:
        fresh = requests.post(url + "/jobs", files={"file": ("big.csv", fh)},
                              timeout=60).json()["id"]
    r = requests.delete(f"{url}/jobs/{fresh}", timeout=10)
    # A 569-row job can end between the submit and the DELETE: the cancel then comes too
    # late and the answer is the job's own final record (200, "succeeded"), nothing deleted.
    assert r.status_code == 204 or r.json()["status"] in (
        "cancelled", "cancelling", "succeeded"), r.text
    r = requests.delete(f"{url}/jobs/{csv_job}", timeout=10)
    assert r.status_code == 204
    assert requests.get(f"{url}/jobs/{csv_job}", timeout=10).status_code == 404

    # Feedback for the first prediction (its record is written off the request's thread).
    label = [{"prediction_id": answer["prediction_id"], "label": 0}]
    wait_until(lambda: requests.post(url + "/feedback", json=label, timeout=10)
               .json()["accepted"] == 1, 20, "the prediction's feedback accepted")

    # A second model trained in the same directory: unpinned requests keep the first.
    frame = pd.DataFrame({"x": np.arange(200.0), "y": np.arange(200.0) * 2 + 1})
    frame.to_csv(home / "x.csv", index=False)
    train = subprocess.run([sys.executable, "-m", "cli", "train", "--data", "x.csv",
                            "--target", "y"], cwd=home, env=env, capture_output=True,
                           text=True, timeout=180)
    assert train.returncode == 0, train.stderr
    r = requests.post(url + "/predict", json={"features": readme_features()}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"]["name"] == "breast-cancer"
    assert requests.get(url + "/readyz", timeout=10).status_code == 200
    assert len(requests.get(url + "/models", timeout=10).json()["models"]) == 2


def test_readme_examples_are_the_ones_walked():
    # If the README's examples change, the walk above must change with them.
    block = readme_block("## Batch jobs")
    assert "-F file=@big.csv -F id_column=customer -F output_format=parquet" in block
    assert "'localhost:8000/jobs?model=breast-cancer:1&on_error=skip'" in block
    for line in ("/jobs/<id>/result", "/jobs/<id>/errors", "limit=20&status=running",
                 "-X DELETE"):
        assert line in block
    assert '"mean radius": 17.99' in readme_block(PREDICT_STEP)
