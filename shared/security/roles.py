"""Roles, the actions each allows, and who a request is (a Principal)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"      # everything, every job
    SUBMIT = "submit"    # its own jobs, predictions, feedback, models
    PREDICT = "predict"  # predictions, feedback, models
    READ = "read"        # models and metrics


class Action(StrEnum):
    PREDICT = "predict"
    FEEDBACK = "feedback"
    READ_MODELS = "read_models"
    SUBMIT_JOBS = "submit_jobs"   # submit, cancel and delete its jobs
    READ_JOBS = "read_jobs"       # list its jobs, read their records and files
    METRICS = "metrics"
    ADMIN = "admin"               # a route that declares nothing


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.SUBMIT: frozenset({Action.SUBMIT_JOBS, Action.READ_JOBS, Action.PREDICT,
                            Action.FEEDBACK, Action.READ_MODELS}),
    Role.PREDICT: frozenset({Action.PREDICT, Action.FEEDBACK, Action.READ_MODELS}),
    Role.READ: frozenset({Action.READ_MODELS, Action.METRICS}),
}

# Routes answered without a key: liveness and readiness, ours and the protocols', the
# version MLflow's scoring server tells anyone, the API's documentation with its page's
# assets (/openapi.json shows the models' feature schemas only to a key that reads models),
# and the web page's shell (its API calls need a key like any client's).
DOCS_ASSETS = ("/static/vendor/swagger-ui/swagger-ui.css",
               "/static/vendor/swagger-ui/swagger-ui-bundle.js", "/static/docs/init.js")
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready",
                          "/ping", "/health", "/version", "/openapi.json", "/docs",
                          *DOCS_ASSETS, "/"})
# Static files answered without a key: the web page's assets. A path is matched only in its
# normal form, so "/static/ui/../x" reaches no other static file without a key.
PUBLIC_PREFIXES = ("/static/ui/",)


def is_public(path: str, public_paths: frozenset[str] | set[str]) -> bool:
    """Whether a request for `path` is answered without a key."""
    if path in public_paths:
        return True
    return path.startswith(PUBLIC_PREFIXES) and posixpath.normpath(path) == path


@dataclass(frozen=True)
class Principal:
    """Who made a request: a named key and its role; `name` is None when authentication is
    off (everything allowed, every job visible)."""

    name: str | None
    role: Role

    def may(self, action: Action) -> bool:
        return action in ROLE_ACTIONS[self.role]

    @property
    def sees_all_jobs(self) -> bool:
        return self.role is Role.ADMIN

    def sees(self, owner: str | None) -> bool:
        """Whether a job submitted by `owner` is visible to this key."""
        return self.sees_all_jobs or (owner is not None and owner == self.name)

    @property
    def owner(self) -> str | None:
        """What a job this key submits records as its owner (the key's name, never the key)."""
        return self.name


ANONYMOUS = Principal(None, Role.ADMIN)  # every request while authentication is off
NOBODY = Principal(None, Role.READ)      # a public route's request: no job is its own


def default_action(method: str, path: str) -> Action:
    """The action of a route that declares none: the protocol endpoints (KServe V1 and V2,
    SageMaker's /invocations) predict or read models; anything else is for admins only, so a
    new route is closed until it says otherwise."""
    if path == "/invocations":
        return Action.PREDICT
    if path.startswith(("/v1/", "/v2/")):
        return Action.READ_MODELS if method in ("GET", "HEAD") else Action.PREDICT
    return Action.ADMIN
