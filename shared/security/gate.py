"""The check every request passes: who it is (its bearer key) and whether its role allows
the route's action. HTTP-free: the API's hook hands in the header, the method and path."""

from __future__ import annotations

from shared.errors import ForbiddenError, UnauthorizedError
from shared.security.keystore import KeyStore
from shared.security.ratelimit import RateLimiter
from shared.security.roles import (
    ANONYMOUS,
    NOBODY,
    PUBLIC_PATHS,
    Action,
    Principal,
    is_public,
)


class Gate:
    """Authentication and authorization of requests; open (ANONYMOUS) when no key is
    configured."""

    def __init__(self, store: KeyStore | None, limiter: RateLimiter | None,
                 metrics_public: bool) -> None:
        self.store, self.limiter = store, limiter
        self.public = PUBLIC_PATHS | ({"/metrics"} if metrics_public else set())

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def identify(self, authorization: str | None) -> Principal | None:
        """Who a request is, refusing nothing (a public route that shows more to some keys):
        ANONYMOUS while authentication is off, None without a valid key."""
        if self.store is None:
            return ANONYMOUS
        return self.store.authenticate(_bearer(authorization))

    def admit(self, authorization: str | None, path: str, action: Action | None) -> Principal:
        """The request's principal; 401 without a valid key, 403 when its role lacks the
        action (None: any valid key), 429 over the key's rate limit."""
        if self.store is None:
            return ANONYMOUS
        if is_public(path, self.public):
            return NOBODY
        principal = self.store.authenticate(_bearer(authorization))
        if principal is None:
            # The same answer for a missing, malformed, unknown or revoked key; the key
            # itself is never logged nor echoed.
            raise UnauthorizedError("this request needs a valid API key: send "
                                    "Authorization: Bearer <key>")
        if action is not None and not principal.may(action):
            raise ForbiddenError(f"key {principal.name!r} has role {principal.role.value}, "
                                 f"which does not allow {action.value}")
        if self.limiter is not None:
            assert principal.name is not None
            self.limiter.check(principal.name)
        return principal


def _bearer(header: str | None) -> str:
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
