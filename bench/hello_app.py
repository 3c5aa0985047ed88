"""The HTTP ceiling: a hello-world Flask app, served by gunicorn with tabserve's own config.

    TABSERVE_WEB_WORKERS=2 gunicorn -c python:api.gunicorn_conf bench.hello_app:app

It reads the same POST body /predict gets and answers a constant JSON object: no parsing,
no model, so its req/s is what the server and the load generator allow on this machine.
"""

from flask import Flask, Response, request

app = Flask(__name__)
HELLO = b'{"hello":"world"}'


@app.route("/predict", methods=["GET", "POST"])
def predict() -> Response:
    request.get_data()  # the body is read, as a real endpoint would
    return Response(HELLO, mimetype="application/json")
