"""The promotion gate: a local SQLite registry of policy validations and promotions.

A policy is identified by its *config hash*: the SHA-256 of the canonical JSON (sorted keys, no spaces) of
``{"allocator": name, "params": params}``, with the parameters validated by the allocator's own model and its
defaults filled in — so ``{target: 32}`` and ``{}`` hash alike when 32 is the default, and any change that
alters behaviour changes the hash. ``fleettwin policy validate`` records a validation (suite, baseline,
metrics per scenario, pass/fail); ``fleettwin policy promote`` records a promotion only if the policy's latest
validation passed; ``fleettwin live shadow --act`` acts only for a promoted hash whose latest validation still
passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleettwin.models.errors import FleettwinError

REGISTRY_ENV = "FLEETTWIN_REGISTRY"
DEFAULT_REGISTRY = Path(".fleettwin") / "registry.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS validations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    policy TEXT NOT NULL,          -- allocator name
    config_hash TEXT NOT NULL,     -- policy_hash(name, params)
    config TEXT NOT NULL,          -- the canonical JSON that was hashed
    suite TEXT NOT NULL,           -- suite name
    suite_hash TEXT NOT NULL,      -- sha256 of the suite file and its scenario files
    baseline TEXT NOT NULL,
    metrics TEXT NOT NULL,         -- JSON: per scenario, policy and baseline metrics and the verdict
    passed INTEGER NOT NULL,
    reasons TEXT NOT NULL,         -- JSON list: why it failed (empty when passed)
    created_at REAL NOT NULL       -- Unix time
);
CREATE INDEX IF NOT EXISTS validations_hash ON validations (config_hash, id);
CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    policy TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    validation_id INTEGER NOT NULL REFERENCES validations (id),
    created_at REAL NOT NULL
);
"""


class GateError(FleettwinError):
    """A policy the gate refuses (not validated, failed, not promoted), or an unusable registry."""


def canonical_policy(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """``{"allocator", "params"}`` with the parameters validated and defaults filled (an unknown name or a bad
    parameter is a ConfigError here, before anything is hashed)."""
    import fleettwin.models.allocators  # noqa: F401  (registers the allocators)
    from fleettwin.models.allocators.base import ALLOCATORS

    return {"allocator": name, "params": ALLOCATORS.validate_params(name, params).model_dump(mode="json")}


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def policy_hash(name: str, params: dict[str, Any] | None) -> str:
    return hashlib.sha256(canonical_json(canonical_policy(name, params)).encode()).hexdigest()


def registry_path(given: str | Path | None = None) -> Path:
    """``given``, else ``$FLEETTWIN_REGISTRY``, else ``.fleettwin/registry.sqlite`` in the working
    directory."""
    return Path(given or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


@dataclass(frozen=True, slots=True, kw_only=True)
class Validation:
    id: int
    policy: str
    config_hash: str
    suite: str
    suite_hash: str
    baseline: str
    metrics: dict
    passed: bool
    reasons: list[str]
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Promotion:
    id: int
    policy: str
    config_hash: str
    validation_id: int
    created_at: float


class GateRegistry:
    """The registry file; every write is one SQLite transaction."""

    def __init__(self, path: str | Path | None = None):
        self.path = registry_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=10.0)
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise GateError(f"{self.path}: not a usable registry: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> GateRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def record_validation(
        self,
        *,
        policy: str,
        config_hash: str,
        config: dict,
        suite: str,
        suite_hash: str,
        baseline: str,
        metrics: dict,
        passed: bool,
        reasons: list[str],
    ) -> Validation:
        now = time.time()
        with self._db:
            cur = self._db.execute(
                "INSERT INTO validations (policy, config_hash, config, suite, suite_hash, baseline, "
                "metrics, passed, reasons, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    policy,
                    config_hash,
                    canonical_json(config),
                    suite,
                    suite_hash,
                    baseline,
                    json.dumps(metrics, default=str),
                    int(passed),
                    json.dumps(reasons),
                    now,
                ),
            )
        return self.validation(cur.lastrowid)

    def validation(self, vid: int) -> Validation:
        row = self._db.execute(
            "SELECT id, policy, config_hash, suite, suite_hash, baseline, metrics, passed, "
            "reasons, created_at FROM validations WHERE id = ?",
            (vid,),
        ).fetchone()
        if row is None:
            raise GateError(f"{self.path}: no validation {vid}")
        return Validation(
            id=row[0],
            policy=row[1],
            config_hash=row[2],
            suite=row[3],
            suite_hash=row[4],
            baseline=row[5],
            metrics=json.loads(row[6]),
            passed=bool(row[7]),
            reasons=json.loads(row[8]),
            created_at=row[9],
        )

    def latest_validation(self, config_hash: str) -> Validation | None:
        row = self._db.execute(
            "SELECT id FROM validations WHERE config_hash = ? ORDER BY id DESC LIMIT 1", (config_hash,)
        ).fetchone()
        return self.validation(row[0]) if row else None

    def validations(self) -> list[Validation]:
        return [self.validation(r[0]) for r in self._db.execute("SELECT id FROM validations ORDER BY id")]

    def promote(self, config_hash: str, policy: str) -> Promotion:
        """Record a promotion; refused unless the latest validation of this exact configuration passed."""
        v = self._passing(config_hash, policy, "promote")
        now = time.time()
        with self._db:
            cur = self._db.execute(
                "INSERT INTO promotions (policy, config_hash, validation_id, created_at) VALUES (?, ?, ?, ?)",
                (policy, config_hash, v.id, now),
            )
        return Promotion(
            id=cur.lastrowid, policy=policy, config_hash=config_hash, validation_id=v.id, created_at=now
        )

    def promotion(self, config_hash: str) -> Promotion | None:
        row = self._db.execute(
            "SELECT id, policy, config_hash, validation_id, created_at FROM promotions "
            "WHERE config_hash = ? ORDER BY id DESC LIMIT 1",
            (config_hash,),
        ).fetchone()
        return (
            Promotion(id=row[0], policy=row[1], config_hash=row[2], validation_id=row[3], created_at=row[4])
            if row
            else None
        )

    def require_promoted(self, config_hash: str, policy: str) -> Promotion:
        """The promotion that lets this configuration act, or GateError saying what is missing."""
        self._passing(config_hash, policy, "act")
        p = self.promotion(config_hash)
        if p is None:
            raise GateError(
                f"policy {policy} ({config_hash[:12]}) passed validation but was never promoted; "
                f"run `fleettwin policy promote` for it (registry {self.path})"
            )
        return p

    def _passing(self, config_hash: str, policy: str, action: str) -> Validation:
        v = self.latest_validation(config_hash)
        if v is None:
            raise GateError(
                f"refusing to {action}: policy {policy} with config hash {config_hash[:12]} has no "
                f"validation in {self.path}; run `fleettwin policy validate` first"
            )
        if not v.passed:
            raise GateError(
                f"refusing to {action}: the latest validation of policy {policy} ({config_hash[:12]}, "
                f"#{v.id}, suite {v.suite}) failed: {'; '.join(v.reasons)}"
            )
        return v
