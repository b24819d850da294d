"""The mlflow role's HTTP boundary: MLflow's errors (codes and statuses) from one translator, and a request's fields."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from aiohttp import web

from runstream.wire.errors import AuthError, Overloaded, PermissionDenied, Unavailable, ValidationError

log = logging.getLogger("runstream.mlflow")


class MlflowError(Exception):
    """An error MLflow's client knows by its code."""

    STATUS = {"INVALID_PARAMETER_VALUE": 400, "BAD_REQUEST": 400, "RESOURCE_ALREADY_EXISTS": 400,
              "RESOURCE_DOES_NOT_EXIST": 404, "ENDPOINT_NOT_FOUND": 404, "UNAUTHENTICATED": 401,
              "PERMISSION_DENIED": 403, "REQUEST_LIMIT_EXCEEDED": 429, "INTERNAL_ERROR": 500,
              "TEMPORARILY_UNAVAILABLE": 503}

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status or self.STATUS[code]


def as_mlflow_error(exc: BaseException) -> MlflowError:
    """The one error translator of this boundary: runstream's errors to MLflow's codes and statuses."""
    if isinstance(exc, MlflowError):
        err = exc
    elif isinstance(exc, ValidationError):
        err = MlflowError("INVALID_PARAMETER_VALUE", str(exc))
    elif isinstance(exc, PermissionDenied):
        err = MlflowError("PERMISSION_DENIED", str(exc))
    elif isinstance(exc, AuthError):
        err = MlflowError("UNAUTHENTICATED", f"{exc}: send a runstream token as MLFLOW_TRACKING_TOKEN (bearer) or as "
                                             "the basic-auth password (MLFLOW_TRACKING_PASSWORD)")
    elif isinstance(exc, Overloaded):
        err = MlflowError("REQUEST_LIMIT_EXCEEDED", str(exc))
    elif isinstance(exc, Unavailable):
        err = MlflowError("TEMPORARILY_UNAVAILABLE", str(exc))
    else:
        log.exception("MLflow API request failed", exc_info=exc)
        err = MlflowError("INTERNAL_ERROR", f"internal error ({type(exc).__name__}); the mlflow role's log has the details")
    return err


def error_response(exc: BaseException) -> web.Response:
    """An error as MLflow's JSON with its status; a 401 asks for basic auth, so a browser signs in."""
    err = as_mlflow_error(exc)
    headers = {"WWW-Authenticate": 'Basic realm="runstream"'} if err.status == 401 else getattr(err, "headers", None)
    return web.json_response({"error_code": err.code, "message": str(err)}, status=err.status, headers=headers)


async def request_fields(request: web.Request) -> dict[str, Any]:
    """The request's fields: the JSON body, else the query string (repeated keys become lists)."""
    if request.can_read_body:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise MlflowError("BAD_REQUEST", f"the body is larger than this server takes ({exc.text})", 413) from None
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise MlflowError("BAD_REQUEST", f"the body is not JSON ({exc})") from None
            except RecursionError:
                raise MlflowError("BAD_REQUEST", "the body's JSON is nested too deeply") from None
            if not isinstance(body, dict):
                raise MlflowError("BAD_REQUEST", "the body must be a JSON object")
            return body
    out: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        out[key] = values if len(values) > 1 or key.endswith("_ids") else values[0]
    return out


def page_offset(token: str | None) -> int:
    """The offset a search's page token carries (every search here pages by offset)."""
    if not token:
        return 0
    try:
        return int(json.loads(base64.b64decode(token))["offset"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"page_token {token[:40]!r} is not one this server gave") from None


def next_page(offset: int) -> str:
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def as_list(value: Any) -> list[Any]:
    """A repeated field as a list: absent or empty is none, a single value (a query string's one key) is one."""
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]
