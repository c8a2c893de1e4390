"""The one SLO type (``Slo``: the scenario's ``slo:`` section, a tenant's SLO class, a pool's SLO in the
policy seam's snapshot) and its percentile targets: ``ttft_p95_s: 2`` means "the 95th percentile of time to
first token, over all requests, is at most 2 s".

Over *all* requests: one that was rejected or never finished counts as infinitely late, so a deployment that
turns work away cannot meet a target by serving only the easy requests (the attainment form, ``ttft_s`` and
``tpot_s``, counts the share of requests within both bounds instead). TPOT is undefined for a one-token
answer; those requests are left out of the TPOT population.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, PositiveFloat, model_validator

from fleettwin.models.registry import did_you_mean

METRICS = ("ttft", "tpot", "e2e", "queue")
_KEY = re.compile(r"(?P<metric>[a-z0-9]+)_p(?P<digits>\d{2,4})_s")
EXAMPLES = "ttft_p95_s, tpot_p95_s, e2e_p99_s, queue_p50_s, ttft_p999_s"


@dataclass(frozen=True, slots=True)
class Target:
    key: str  # as written: ttft_p95_s
    metric: str  # ttft | tpot | e2e | queue
    q: float  # percentile, 0 < q < 100
    limit_s: float

    @property
    def label(self) -> str:
        """``TTFT p95 <= 2 s`` (milliseconds below a second)."""
        limit = f"{self.limit_s:g} s" if self.limit_s >= 1 else f"{1e3 * self.limit_s:g} ms"
        return f"{self.metric.upper()} p{self.q:g} <= {limit}"


def parse_target_key(key: str, value: object, *, known: list[str] | None = None) -> Target:
    """The target a ``slo:`` key names; a ValueError that says what was expected (pydantic reports it with
    the field)."""
    m = _KEY.fullmatch(key)
    if m is None or m["metric"] not in METRICS:
        hint = did_you_mean(key, [*(known or []), *EXAMPLES.split(", ")])
        raise ValueError(
            f"unknown key {key!r}{hint}; a percentile target is <metric>_p<q>_s with metric one of "
            f"{', '.join(METRICS)} and q two or more digits ({EXAMPLES})"
        )
    digits = m["digits"]
    q = float(digits) if len(digits) == 2 else float("0." + digits) * 100  # p999 -> 99.9
    if not 0 < q < 100:
        raise ValueError(f"{key}: the percentile must be between 0 and 100 exclusive, got {q:g}")
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{key}: a target is a number of seconds > 0, got {value!r}")
    return Target(key=key, metric=m["metric"], q=round(q, 6), limit_s=float(value))


def targets(slo_targets: dict[str, float]) -> tuple[Target, ...]:
    """The ``Target`` of every percentile key of a scenario's ``slo:`` section."""
    return tuple(parse_target_key(k, v) for k, v in slo_targets.items())


class Slo(BaseModel):
    """Two forms side by side: ``ttft_s``/``tpot_s`` bound each request (attainment: the share that meets
    both); ``<metric>_p<q>_s`` keys are percentile targets over all requests, e.g. ``ttft_p95_s: 2``,
    ``tpot_p95_s: 0.05``, ``e2e_p99_s: 30`` (metrics ttft, tpot, e2e, queue; p999 is the 99.9th).

    Validated once and frozen, then read as is by the simulator's statistics, the capacity model and the
    snapshot a controller sees. Not a ``StrictModel``: the target keys are open-ended, so unknown keys are
    allowed here and each is checked by name instead (a misspelt key still fails, with a "did you mean")."""

    model_config = ConfigDict(extra="allow", frozen=True)
    ttft_s: PositiveFloat = 2.0
    tpot_s: PositiveFloat = 0.2

    @model_validator(mode="after")
    def _targets_named_well(self) -> Slo:
        for key, value in (self.model_extra or {}).items():
            parse_target_key(key, value, known=list(type(self).model_fields))
        return self

    @property
    def targets(self) -> tuple[Target, ...]:
        """The percentile targets, in the file's order (none: only the attainment bounds)."""
        return targets(self.model_extra or {})

    @property
    def bounds(self) -> Slo:
        """The attainment bounds alone, without the percentile targets (what a tenant's share is judged
        by)."""
        return Slo(ttft_s=self.ttft_s, tpot_s=self.tpot_s) if self.model_extra else self


def parse_cli_target(text: str) -> tuple[str, float]:
    """``ttft_p95=2s`` / ``tpot_p95=50ms`` / ``e2e_p99_s=30`` -> (``ttft_p95_s``, seconds), for ``--slo``."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip().lower()
    if not sep or not key or not raw:
        raise ValueError(f"--slo {text!r}: expected METRIC_pQ=VALUE, e.g. ttft_p95=2s or tpot_p95=50ms")
    if not key.endswith("_s"):
        key += "_s"
    scale = 1.0
    for suffix, factor in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)], factor
            break
    try:
        value = float(raw) * scale
    except ValueError:
        raise ValueError(f"--slo {text!r}: {raw!r} is not a number (write 2s, 50ms or 0.05)") from None
    try:
        parse_target_key(key, value)
    except ValueError as exc:
        raise ValueError(f"--slo {text!r}: {exc}") from None
    return key, value
