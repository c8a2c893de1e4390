"""A parser for the Prometheus text exposition format (0.0.4, and the OpenMetrics subset vLLM can emit).

Written here rather than borrowed from ``prometheus_client.parser`` so that malformed input fails with the
line number, the line and the reason (``MetricsFormatError``), which is what someone debugging a scrape of a
real server needs. Samples are grouped into families by their ``# TYPE`` declaration; a sample whose name is
a declared family plus a suffix (``_total``, ``_bucket``, ``_count``, ``_sum``, ``_created``, ``_info``)
belongs to that family, so both the old (``# TYPE x counter`` + ``x_total``) and the new
(``# TYPE x_total counter``) spellings of counters work.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from fleettwin.models.errors import FleettwinError

METRIC_TYPES = {
    "counter",
    "gauge",
    "histogram",
    "summary",
    "untyped",
    "unknown",
    "info",
    "stateset",
    "gaugehistogram",
}
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_info", "_gcount", "_gsum")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class MetricsFormatError(FleettwinError):
    """Prometheus text that cannot be parsed; the message names the line."""

    def __init__(self, line_no: int, line: str, reason: str):
        self.line_no, self.line, self.reason = line_no, line, reason
        shown = line if len(line) <= 120 else line[:117] + "..."
        where = f"metrics line {line_no}: " if line_no else "metrics: "  # 0: about the text as a whole
        super().__init__(f"{where}{reason}: {shown!r}")


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(slots=True)
class MetricFamily:
    name: str
    type: str = "untyped"
    help: str = ""
    samples: list[Sample] = field(default_factory=list)


def parse(text: str) -> dict[str, MetricFamily]:
    """Families by name, in the order they appear."""
    families: dict[str, MetricFamily] = {}
    typed: set[str] = set()
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line == "# EOF":
                break
            _comment(families, typed, line, no, raw)
            continue
        name, labels, value = _sample(line, no, raw)
        fam = families.get(name)
        if (
            fam is None or name not in typed
        ):  # prefer the declared family: x_total belongs to "# TYPE x counter"
            base = _family_name(name, families)
            fam = families.get(base) if base in typed or fam is None else fam
        if fam is None:
            fam = families[name] = MetricFamily(name)
        if fam.type in ("histogram", "gaugehistogram") and name.endswith("_bucket") and "le" not in labels:
            raise MetricsFormatError(no, raw, "histogram bucket without an 'le' label")
        fam.samples.append(Sample(name, labels, value))
    return families


def _family_name(sample_name: str, families: dict[str, MetricFamily]) -> str:
    for suffix in SUFFIXES:
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in families:
            return sample_name[: -len(suffix)]
    return sample_name


def _comment(families: dict[str, MetricFamily], typed: set[str], line: str, no: int, raw: str) -> None:
    parts = line[1:].strip().split(None, 2)
    if not parts or parts[0] not in ("HELP", "TYPE"):
        return  # a plain comment
    if len(parts) < 2 or not _NAME.fullmatch(parts[1]):
        raise MetricsFormatError(no, raw, f"# {parts[0]} needs a valid metric name")
    kind, name = parts[0], parts[1]
    fam = families.setdefault(name, MetricFamily(name))
    if kind == "HELP":
        fam.help = parts[2] if len(parts) > 2 else ""
        return
    mtype = parts[2].strip() if len(parts) > 2 else ""
    if mtype not in METRIC_TYPES:
        raise MetricsFormatError(no, raw, f"unknown metric type {mtype!r}")
    if name in typed:
        raise MetricsFormatError(no, raw, f"second # TYPE line for {name}")
    if fam.samples:
        raise MetricsFormatError(no, raw, f"# TYPE for {name} after its samples")
    typed.add(name)
    fam.type = mtype


def _sample(line: str, no: int, raw: str) -> tuple[str, dict[str, str], float]:
    m = _NAME.match(line)
    if m is None:
        raise MetricsFormatError(no, raw, "expected a metric name")
    name, pos = m.group(), m.end()
    labels: dict[str, str] = {}
    if pos < len(line) and line[pos] == "{":
        labels, pos = _labels(line, pos + 1, no, raw)
    rest = line[pos:]
    if rest[:1] not in (" ", "\t"):
        raise MetricsFormatError(no, raw, "expected a space and a value after the metric name or labels")
    fields = rest.split(" # ", 1)[0].split()  # OpenMetrics exemplars follow ' # '
    if not 1 <= len(fields) <= 2:
        raise MetricsFormatError(no, raw, "expected 'value [timestamp]'")
    if len(fields) == 2:
        _value(fields[1], no, raw)  # a timestamp must be a number too
    return name, labels, _value(fields[0], no, raw)


def _value(text: str, no: int, raw: str) -> float:
    low = text.lower()
    if low in ("nan", "+inf", "inf", "-inf"):
        return {"nan": math.nan, "+inf": math.inf, "inf": math.inf, "-inf": -math.inf}[low]
    try:
        return float(text)
    except ValueError:
        raise MetricsFormatError(no, raw, f"value {text!r} is not a number") from None


def _labels(line: str, pos: int, no: int, raw: str) -> tuple[dict[str, str], int]:
    """Parse ``name="value",...}`` starting after the brace; returns the labels and the position after
    ``}``."""
    labels: dict[str, str] = {}
    n = len(line)
    while True:
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos < n and line[pos] == "}":
            return labels, pos + 1
        m = _LABEL_NAME.match(line, pos)
        if m is None:
            raise MetricsFormatError(no, raw, f"bad label name at column {pos + 1}")
        key, pos = m.group(), m.end()
        if line[pos : pos + 2] != '="':
            raise MetricsFormatError(no, raw, f'expected =" after label {key!r}')
        pos += 2
        chars: list[str] = []
        while True:
            if pos >= n:
                raise MetricsFormatError(no, raw, f"unterminated value of label {key!r}")
            c = line[pos]
            if c == "\\":
                if pos + 1 >= n or line[pos + 1] not in _ESCAPES:
                    raise MetricsFormatError(no, raw, f"bad escape in label {key!r}")
                chars.append(_ESCAPES[line[pos + 1]])
                pos += 2
            elif c == '"':
                pos += 1
                break
            else:
                chars.append(c)
                pos += 1
        if key in labels:
            raise MetricsFormatError(no, raw, f"label {key!r} repeated")
        labels[key] = "".join(chars)
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos < n and line[pos] == ",":
            pos += 1
        elif pos < n and line[pos] == "}":
            return labels, pos + 1
        else:
            raise MetricsFormatError(no, raw, f"expected ',' or '}}' after label {key!r}")
