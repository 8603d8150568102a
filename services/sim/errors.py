"""Upstox's JSON envelopes: success, and errors with both snake_case and camelCase keys."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

INVALID_TOKEN = "UDAPI100050"  # noqa: S105 (an error code, not a secret)
TOO_MANY_REQUESTS = "UDAPI10005"
INVALID_INPUT = "UDAPI100036"
UNEXPECTED = "UDAPI100500"
ORDER_TYPE_REQUIRED = "UDAPI1004"
VALIDITY_REQUIRED = "UDAPI1007"
INVALID_VALIDITY = "UDAPI1055"
INVALID_ORDER_TYPE = "UDAPI1056"
UNKNOWN_ORDER = "UDAPI100010"
CANCEL_TERMINAL = "UDAPI100040"
STATIC_IP_BLOCKED = "UDAPI1154"
INVALID_ALGO_NAME = "UDAPI1156"


class UpstoxError(Exception):
    """An error answered with Upstox's error envelope."""

    def __init__(
        self,
        http_status: int,
        code: str,
        message: str,
        property_path: str | None = None,
        invalid_value: Any = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.property_path = property_path
        self.invalid_value = invalid_value


def error_body(code: str, message: str, property_path: str | None = None, invalid_value: Any = None) -> dict[str, Any]:
    """`{"status":"error","errors":[...]}` with snake_case keys and their deprecated camelCase twins."""
    return {
        "status": "error",
        "errors": [
            {
                "error_code": code,
                "message": message,
                "property_path": property_path,
                "invalid_value": invalid_value,
                "errorCode": code,
                "propertyPath": property_path,
                "invalidValue": invalid_value,
            }
        ],
    }


def error_response(exc: UpstoxError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.property_path, exc.invalid_value), status_code=exc.http_status
    )


def success(data: Any, **extra: Any) -> dict[str, Any]:
    """`{"status":"success","data":...}` plus extra top-level members (e.g. metadata)."""
    return {"status": "success", "data": data, **extra}


def invalid_token() -> UpstoxError:
    return UpstoxError(401, INVALID_TOKEN, "Invalid token used to access API")


def rate_limited() -> UpstoxError:
    return UpstoxError(429, TOO_MANY_REQUESTS, "Too Many Request Sent")


def rest_down() -> UpstoxError:
    return UpstoxError(503, UNEXPECTED, "Something went wrong, please try after some time (simulated outage)")


def ip_blocked() -> UpstoxError:
    return UpstoxError(403, STATIC_IP_BLOCKED, "Access to this API is blocked due to static IP restrictions.")


def invalid_algo_name() -> UpstoxError:
    return UpstoxError(400, INVALID_ALGO_NAME, "Invalid or missing X-Algo-Name header", "X-Algo-Name")
