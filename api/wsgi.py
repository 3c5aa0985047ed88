"""gunicorn entry point: `gunicorn -c python:api.gunicorn_conf api.wsgi:app`."""

from api import create_app

app = create_app()
