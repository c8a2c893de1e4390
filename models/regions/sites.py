"""Cloud regions: where they are (time zone, coordinates) and the measured round-trip times between them.

Package data (``models/data/regions.csv``, ``region_sites.csv``; provenance in ``regions.md``): 12 AWS
regions, the cloudping.co p50 RTT over one year (snapshot of 2025-10-09), AWS region to AWS region, in ms.

The matrix is **directional**, as published (A->B and B->A differ by up to 2.7 ms): ``rtt_ms(a, b)`` is the
median round trip measured from agents in ``a`` to ``b``. The simulator charges a request served in ``b`` for
a user in ``a`` with ``rtt_ms(a, b)`` (half on the way in, half on the way out). ``symmetrised()`` gives the
mean of both directions for users who want a symmetric matrix. The diagonal is cloudping's same-region value
(2.5-5.3 ms, across availability zones): the RTT of a request served in its own region.

Pure: no I/O beyond reading the package data, like ``models/catalog.py``.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from fleettwin.models.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionSite:
    """Where a region is: its city, coordinates (to about 100 km) and UTC offsets (standard and DST),
    hours."""

    name: str
    city: str
    lat: float
    lon: float
    utc_offset_std_h: float
    utc_offset_dst_h: float


@dataclass(frozen=True, slots=True)
class RttMatrix:
    """Round-trip times in ms between named regions; ``ms[i][j]`` is from ``names[i]`` to ``names[j]``."""

    names: tuple[str, ...]
    ms: tuple[tuple[float, ...], ...]
    source: str = ""
    _idx: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(set(self.names)) != n:
            raise ConfigError(f"RTT matrix: repeated region names in {list(self.names)}")
        if len(self.ms) != n or any(len(row) != n for row in self.ms):
            raise ConfigError(f"RTT matrix: expected {n}x{n} values for {n} regions")
        for a, row in zip(self.names, self.ms, strict=True):
            for b, v in zip(self.names, row, strict=True):
                if not (math.isfinite(v) and v >= 0):
                    raise ConfigError(f"RTT matrix: {a} -> {b} must be a finite number of ms >= 0, got {v}")
        object.__setattr__(self, "_idx", {name: i for i, name in enumerate(self.names)})

    def index(self, name: str) -> int:
        try:
            return self._idx[name]
        except KeyError:
            raise ConfigError(
                f"unknown region {name!r}; the RTT matrix has: {', '.join(self.names)}"
            ) from None

    def rtt_ms(self, src: str, dst: str) -> float:
        return self.ms[self.index(src)][self.index(dst)]

    def symmetrised(self) -> RttMatrix:
        """The mean of both directions for every pair (the diagonal unchanged)."""
        n = len(self.names)
        ms = tuple(tuple((self.ms[i][j] + self.ms[j][i]) / 2 for j in range(n)) for i in range(n))
        return RttMatrix(self.names, ms, f"{self.source} (symmetrised: mean of both directions)")

    def subset(self, names: Sequence[str]) -> RttMatrix:
        idx = [self.index(n) for n in names]
        return RttMatrix(tuple(names), tuple(tuple(self.ms[i][j] for j in idx) for i in idx), self.source)

    def with_overrides(
        self,
        overrides: Mapping[str, Mapping[str, float]],
        *,
        local_ms: float | None = None,
        symmetric_overrides: bool = True,
    ) -> RttMatrix:
        """A matrix with some pairs replaced (``{from: {to: ms}}``); regions not in this matrix are added, and
        then every pair involving them must be given. ``symmetric_overrides`` also sets the reverse direction
        of a pair when only one is given; ``local_ms`` replaces the diagonal."""
        names = list(self.names)
        for a, row in overrides.items():
            for b in (a, *row):
                if b not in names:
                    names.append(b)
        known = {(a, b): self.rtt_ms(a, b) for a in self.names for b in self.names}
        given = {(a, b): float(v) for a, row in overrides.items() for b, v in row.items()}
        if symmetric_overrides:
            for (a, b), v in list(given.items()):
                given.setdefault((b, a), v)
        values = {**known, **given}
        if local_ms is not None:
            values.update({(a, a): float(local_ms) for a in names})
        missing = [f"{a} -> {b}" for a in names for b in names if (a, b) not in values]
        if missing:
            raise ConfigError(
                f"RTT matrix: no value for {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
            )
        ms = tuple(tuple(values[(a, b)] for b in names) for a in names)
        return RttMatrix(tuple(names), ms, f"{self.source} with overrides" if self.source else "overrides")


@dataclass(frozen=True, slots=True)
class RegionCatalog:
    """The package's regions and their RTT matrix."""

    sites: Mapping[str, RegionSite]
    rtt: RttMatrix

    def site(self, name: str) -> RegionSite:
        try:
            return self.sites[name]
        except KeyError:
            raise ConfigError(f"unknown region {name!r}; known: {', '.join(self.sites)}") from None


@functools.cache
def region_catalog() -> RegionCatalog:
    """The 12 regions of ``models/data/region_sites.csv`` and the directional RTT matrix of
    ``regions.csv``."""
    sites = {}
    for row in _read_csv("region_sites.csv"):
        sites[row["region"]] = RegionSite(
            name=row["region"],
            city=row["city"],
            lat=float(row["lat"]),
            lon=float(row["lon"]),
            utc_offset_std_h=float(row["utc_offset_std_h"]),
            utc_offset_dst_h=float(row["utc_offset_dst_h"]),
        )
    rows = _read_csv("regions.csv")
    names = list(sites)
    values: dict[tuple[str, str], float] = {}
    sources = set()
    for line, row in enumerate(rows, start=2):
        a, b = row["from_region"], row["to_region"]
        if a not in sites or b not in sites:
            raise ConfigError(
                f"regions.csv:{line}: region {a if a not in sites else b!r} not in region_sites.csv"
            )
        values[(a, b)] = float(row["rtt_ms"])
        sources.add(row["source"])
    missing = [f"{a}->{b}" for a in names for b in names if (a, b) not in values]
    if missing:
        raise ConfigError(f"regions.csv: missing pairs {', '.join(missing[:6])}")
    ms = tuple(tuple(values[(a, b)] for b in names) for a in names)
    return RegionCatalog(sites=sites, rtt=RttMatrix(tuple(names), ms, "; ".join(sorted(sources))))


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("fleettwin.models").joinpath("data", name).read_text(encoding="utf-8")
    return [{k: v.strip() for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]
