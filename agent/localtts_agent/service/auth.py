"""The bearer token that guards synthesis and voices when LOCALTTS_API_KEY is set."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import ServiceError
from .state import State

_bearer = HTTPBearer(auto_error=False, description="LOCALTTS_API_KEY, when set")


def require_api_key(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """A route dependency: 401 unless the request carries the service's API key."""
    expected = state.service_settings.api_key
    if not expected:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ServiceError(
            401,
            "unauthorized",
            "missing or wrong bearer token: send 'Authorization: Bearer <LOCALTTS_API_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


# the dependencies of every route that synthesizes or manages voices
PROTECTED = [Depends(require_api_key)]
