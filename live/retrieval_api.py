"""The body of ``POST /v1/retrieve``, shared by the retrieval service (which answers it) and the gateway
(which checks and forwards it, and publishes its schema) without the gateway importing FAISS."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleettwin.live.api_error import ApiError

MAX_K = 1000
MAX_DIM = 65536


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collection: str = Field(min_length=1, max_length=200)
    query: str | None = Field(None, max_length=100_000)
    vector: list[float] | None = Field(None, min_length=1, max_length=MAX_DIM)
    k: int = Field(10, ge=1, le=MAX_K)
    nprobe: int | None = Field(None, ge=1, le=1_000_000)
    ef_search: int | None = Field(None, ge=1, le=1_000_000)
    itopk_size: int | None = Field(None, ge=1, le=1_000_000)

    @field_validator("vector")
    @classmethod
    def _finite(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(x) and abs(x) < 1e30 for x in v):
            raise ValueError("vector values must be finite numbers below 1e30 in magnitude")
        return v


def parse_request(body: Any) -> RetrieveRequest:
    """The request, or a 400 naming the field; exactly one of ``query`` and ``vector``."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        req = RetrieveRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        raise ApiError(
            400, f"{field}: {msg}" if field else msg, param=str(err["loc"][0]) if err["loc"] else None
        ) from None
    if (req.query is None) == (req.vector is None):
        raise ApiError(400, "give exactly one of 'query' (text) and 'vector'", param="query")
    return req
