"""POST /feedback: labels must be among the model's classes, a prediction is labelled once
(across requests and API processes), and bad items are named."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import requests

from shared import keys
from shared.monitoring.predictions import lookup_online_prediction
from tests.inprocess import inprocess_app
from tests.jobclient import submit, wait_job
from tests.servers import wait_until

WINDOW = keys.feedback_window("breast-cancer", "1")


@pytest.fixture
def client(base_settings, redis_client):
    return inprocess_app(base_settings).test_client()


def predict(client, redis_client, body):
    """A prediction, once it is kept in Redis (written off the request path)."""
    answer = client.post("/predict", json=body).json
    pid = answer.get("prediction_id") or answer["prediction_ids"][0].partition(".")[0]
    wait_until(lambda: lookup_online_prediction(redis_client, pid) is not None, 10,
               "the prediction in Redis")
    return answer


@pytest.mark.parametrize("label", [7, "malignant", True, 0.5, "1.5"])
def test_a_label_that_is_not_a_class_is_422_naming_the_item(client, redis_client, demo_rows,
                                                             label):
    answer = predict(client, redis_client, {"features": demo_rows[0]})
    r = client.post("/feedback", json=[{"prediction_id": answer["prediction_id"], "label": 1},
                                       {"prediction_id": answer["prediction_id"],
                                        "label": label}])
    assert r.status_code == 422, r.text
    [detail] = r.json["error"]["details"]
    assert detail["row"] == 1 and detail["field"] == "label"
    assert "is not a class of breast-cancer:1" in detail["message"]
    assert redis_client.llen(WINDOW) == 0  # nothing counted, the good item neither


@pytest.mark.parametrize("label", [1, 0, "1", 1.0])
def test_labels_of_the_classes_in_any_spelling_count(client, redis_client, demo_rows, label):
    answer = predict(client, redis_client, {"features": demo_rows[0]})
    r = client.post("/feedback", json=[{"prediction_id": answer["prediction_id"],
                                        "label": label}])
    assert r.status_code == 200, r.text
    assert r.json["accepted"] == 1
    correct = str(int(float(label))) == str(answer["prediction"])
    assert r.json["models"][0]["accuracy"] == (1.0 if correct else 0.0)


def test_a_second_label_for_a_prediction_is_reported_not_counted(client, redis_client,
                                                                 demo_rows):
    single = predict(client, redis_client, {"features": demo_rows[0]})
    many = predict(client, redis_client, {"instances": demo_rows[1:4]})
    pid, first = single["prediction_id"], many["prediction_ids"][0]
    body = [{"prediction_id": pid, "label": 1}, {"prediction_id": pid, "label": 0},
            {"prediction_id": first, "label": 1}]
    r = client.post("/feedback", json=body)
    assert r.json["accepted"] == 2 and r.json["duplicates"] == [pid]
    # The same request again (a retry), and the same predictions spelt otherwise.
    again = client.post("/feedback", json=body + [
        {"prediction_id": pid + ".0", "label": 1},
        {"prediction_id": first.replace(".0", ".00"), "label": 1}]).json
    assert again["accepted"] == 0
    assert again["duplicates"] == [pid, pid, first, pid + ".0", first.replace(".0", ".00")]
    assert redis_client.llen(WINDOW) == 2


def test_an_empty_prediction_id_says_so(client):
    r = client.post("/feedback", json=[{"prediction_id": "", "label": 1},
                                       {"prediction_id": 5, "label": 1}])
    assert r.status_code == 422
    assert [d["message"] for d in r.json["error"]["details"]] == ["must not be empty",
                                                                   "must be a string"]


def test_odd_row_numbers_are_unmatched(client, redis_client, demo_rows):
    many = predict(client, redis_client, {"instances": demo_rows[:2]})
    base = many["prediction_ids"][0].partition(".")[0]
    ids = [f"{base}.-1", f"{base}.²", f"{base}.9", f"{base}.1_0"]
    r = client.post("/feedback", json=[{"prediction_id": i, "label": 1} for i in ids])
    assert r.status_code == 200 and r.json["unmatched"] == ids


def test_concurrent_labels_for_one_prediction_count_once(api_server, redis_client,
                                                         demo_rows):
    answer = requests.post(api_server.url + "/predict", json={"features": demo_rows[0]},
                           timeout=10).json()
    pid = answer["prediction_id"]
    wait_until(lambda: lookup_online_prediction(redis_client, pid) is not None, 10,
               "the prediction in Redis")

    def post(_: int) -> dict:
        return requests.post(api_server.url + "/feedback",
                             json=[{"prediction_id": pid, "label": 1}], timeout=10).json()

    with ThreadPoolExecutor(8) as pool:  # both gunicorn workers take a share
        answers = list(pool.map(post, range(16)))
    assert sum(a["accepted"] for a in answers) == 1
    assert sum(len(a["duplicates"]) for a in answers) == 15
    assert redis_client.llen(WINDOW) == 1


def test_a_job_row_is_labelled_once(api_server, worker, redis_client, demo_data):
    names, X = demo_data
    job = submit(api_server.url, pd.DataFrame(X[:5], columns=names).to_csv(index=False)
                 .encode(), "csv").json()
    assert wait_job(api_server.url, job["id"])["status"] == "succeeded"
    ids = [f"{job['id']}.3", f"{job['id']}.3", f"{job['id']}.03", f"{job['id']}.4"]
    r = requests.post(api_server.url + "/feedback",
                      json=[{"prediction_id": i, "label": 0} for i in ids], timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2 and r.json()["duplicates"] == ids[1:3]
    foreign = requests.post(api_server.url + "/feedback",
                            json=[{"prediction_id": ids[0], "label": "malignant"}], timeout=10)
    assert foreign.status_code == 422
    assert foreign.json()["error"]["details"][0]["row"] == 0
