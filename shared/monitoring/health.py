"""Readiness: can this process serve predictions, and is the job queue reachable?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.errors import TabserveError

if TYPE_CHECKING:
    from shared.services import Services


def check_model(rt: Services) -> dict[str, Any]:
    """Whether the default model resolves and loads."""
    try:
        loaded = rt.models.resolve(None, rt.settings.default_model)
    except TabserveError as exc:
        return {"status": "unavailable", "error": exc.message}
    return {"status": "ok", "model": loaded.manifest.ref}


def check_redis(rt: Services) -> dict[str, Any]:
    """Whether Redis (broker and job store) answers a PING."""
    try:
        rt.redis.ping()
    except Exception as exc:  # any connection failure means "not reachable"
        return {"status": "unavailable", "error": f"redis not reachable: {type(exc).__name__}"}
    return {"status": "ok"}


def check_readiness(rt: Services) -> dict[str, Any]:
    """Ready when predictions can be served; Redis affects only the batch path."""
    checks = {"model": check_model(rt), "redis": check_redis(rt)}
    ready = checks["model"]["status"] == "ok"
    return {"ready": ready, "checks": checks}
