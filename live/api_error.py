"""The one error type of the live servers: an OpenAI-style error body with its HTTP status.

vLLM's shape (``ErrorResponse``): ``{"error": {"message", "type", "param", "code"}}`` with ``code`` the HTTP
status. Messages say what was wrong with a request without repeating its content.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with HTTP ``status``."""

    TYPES = {
        400: "BadRequestError",
        401: "AuthenticationError",
        403: "PermissionDeniedError",
        404: "NotFoundError",
        405: "MethodNotAllowedError",
        408: "RequestTimeoutError",
        413: "RequestTooLargeError",
        429: "RateLimitError",
        500: "InternalServerError",
        502: "BadGatewayError",
        503: "ServiceUnavailableError",
    }

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type = type or self.TYPES.get(status, "APIError")

    def __reduce__(self) -> tuple:
        """Picklable with its status, param and type (the gateway's checker processes send refusals back)."""
        return type(self), (self.status, self.message), {"param": self.param, "type": self.type}

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}
        }
