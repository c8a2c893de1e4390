"""Trace readers and loader: the real shipped files, window/speedup, and one error per kind of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fleettwin.models.errors import ConfigError, TraceFormatError
from fleettwin.models.workload.traces import load_trace, read_azure_csv, read_mooncake_jsonl, read_trace

TRACES = Path(__file__).resolve().parents[2] / "traces"
AZURE_CONV = TRACES / "azure2023_conv" / "AzureLLMInferenceTrace_conv.csv"
AZURE_CODE = TRACES / "azure2023_code" / "AzureLLMInferenceTrace_code.csv"
MOONCAKE = TRACES / "mooncake_conversation" / "conversation_trace.jsonl"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


# --- the real files, against the numbers in their SOURCE.md ---------------------------------------------


def test_azure_conv_matches_source_md():
    t = read_azure_csv(AZURE_CONV)
    assert len(t) == 9739
    assert t.arrival_s[0] == 0.0 and np.all(np.diff(t.arrival_s) >= 0)
    assert t.span_s == pytest.approx(1750.8, abs=0.05)
    assert len(t) / t.span_s == pytest.approx(5.56, abs=0.005)
    assert t.prompt_tokens.mean() == pytest.approx(1237.2, abs=0.05)
    assert np.percentile(t.prompt_tokens, [50, 99]).tolist() == pytest.approx([1035, 4122])
    assert (t.prompt_tokens.min(), t.prompt_tokens.max()) == (2, 14050)
    assert t.output_tokens.mean() == pytest.approx(221.3, abs=0.05)
    assert np.percentile(t.output_tokens, [50, 99]).tolist() == pytest.approx([140, 611.6], abs=0.05)
    assert (t.output_tokens.min(), t.output_tokens.max()) == (7, 1000)
    assert t.prefix_blocks is None
    assert t.origin == "2023-11-16 18:15:46.6805900"


def test_azure_code_and_mooncake_match_source_md():
    code = read_trace(AZURE_CODE, "azure")
    assert len(code) == 5353 and code.span_s == pytest.approx(1705.8, abs=0.05)
    assert np.median(code.output_tokens) == 13
    moon = read_trace(MOONCAKE, "mooncake")
    assert len(moon) == 5606 and moon.span_s == pytest.approx(1767.0)
    assert moon.prompt_tokens.mean() == pytest.approx(12934.5, abs=0.05)
    assert moon.output_tokens.min() == 1 and moon.output_tokens.max() == 2000


def test_columns_are_read_only():
    t = read_azure_csv(AZURE_CONV)
    with pytest.raises(ValueError):
        t.arrival_s[0] = 5.0


def test_azure_loads_uncached(tmp_path):
    # Speed is measured by benchmarks, not asserted here: the shared machines are too noisy for a timed test.
    fresh = tmp_path / "conv.csv"  # a new path, so the per-file cache cannot answer
    shutil.copy(AZURE_CONV, fresh)
    requests = load_trace(fresh, "azure")
    assert len(requests) == 9739


def test_load_trace_requests_are_sorted_with_ids_model_and_tenant():
    reqs = load_trace(AZURE_CONV, "azure", model="llama-3-8b", tenant="chat", id_offset=100)
    assert [r.id for r in reqs[:3]] == [100, 101, 102]
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(reqs, reqs[1:], strict=False))
    assert reqs[0].arrival_s == 0.0
    assert (reqs[0].prompt_tokens, reqs[0].output_tokens) == (374, 44)
    assert {r.model for r in reqs} == {"llama-3-8b"} and {r.tenant for r in reqs} == {"chat"}


def test_window_selects_trace_time_and_rebases_to_zero():
    table = read_azure_csv(AZURE_CONV)
    reqs = load_trace(AZURE_CONV, "azure", start_s=600, duration_s=300)
    inside = (table.arrival_s >= 600) & (table.arrival_s < 900)
    assert len(reqs) == int(inside.sum())
    assert min(r.arrival_s for r in reqs) >= 0 and max(r.arrival_s for r in reqs) < 300
    assert reqs[0].arrival_s == pytest.approx(table.arrival_s[inside][0] - 600)
    assert [r.prompt_tokens for r in reqs] == table.prompt_tokens[inside].tolist()


def test_speedup_compresses_time_and_keeps_tokens():
    base = load_trace(AZURE_CONV, "azure")
    fast = load_trace(AZURE_CONV, "azure", speedup=3.0)
    assert len(fast) == len(base)
    span = fast[-1].arrival_s - fast[0].arrival_s
    assert len(fast) / span == pytest.approx(16.7, abs=0.02)
    assert [r.arrival_s for r in fast] == pytest.approx([r.arrival_s / 3 for r in base])
    assert [(r.prompt_tokens, r.output_tokens) for r in fast] == [
        (r.prompt_tokens, r.output_tokens) for r in base
    ]


def test_window_then_speedup():
    reqs = load_trace(AZURE_CONV, "azure", start_s=300, duration_s=600, speedup=2.0)
    assert max(r.arrival_s for r in reqs) < 300


def test_max_requests_keeps_the_first():
    reqs = load_trace(AZURE_CONV, "azure", max_requests=10)
    assert len(reqs) == 10 and reqs == load_trace(AZURE_CONV, "azure")[:10]


def test_mooncake_prefix_blocks_and_ms_timestamps():
    reqs = load_trace(MOONCAKE, "mooncake", max_requests=3)
    assert reqs[0].prefix_blocks == tuple(range(14))
    assert reqs[1].prefix_blocks[0] == 0  # shares the first block with request 0
    assert all(r.prefix_blocks for r in load_trace(MOONCAKE, "mooncake"))
    later = load_trace(MOONCAKE, "mooncake", start_s=100, duration_s=10)
    assert all(0 <= r.arrival_s < 10 for r in later)


def test_empty_window_names_file_and_window():
    with pytest.raises(ConfigError, match=r"conv\.csv.*\[5000, 5010\)"):
        load_trace(AZURE_CONV, "azure", start_s=5000, duration_s=10)


@pytest.mark.parametrize(
    "kwargs", [{"speedup": 0}, {"speedup": -1}, {"duration_s": 0}, {"start_s": -1}, {"max_requests": 0}]
)
def test_bad_loader_arguments(kwargs):
    with pytest.raises(ConfigError):
        load_trace(AZURE_CONV, "azure", **kwargs)


def test_missing_file_and_unknown_format():
    with pytest.raises(ConfigError, match="nope.csv"):
        read_azure_csv("nope.csv")
    with pytest.raises(ConfigError, match="unknown trace format"):
        read_trace(AZURE_CONV, "parquet")  # type: ignore[arg-type]


# --- tolerated quirks -----------------------------------------------------------------------------------


def test_backwards_timestamps_are_sorted_with_their_rows(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(
        AZURE_HEADER + "2023-11-16 18:00:02.0000000,20,2\n2023-11-16 18:00:01.5000000,10,1\n"
        "2023-11-16 18:00:03,30,3\n"
    )
    t = read_azure_csv(f)
    assert t.arrival_s.tolist() == [0.0, 0.5, 1.5]
    assert t.prompt_tokens.tolist() == [10, 20, 30] and t.output_tokens.tolist() == [1, 2, 3]
    assert t.origin == "2023-11-16 18:00:01.5000000"


def test_crlf_reordered_columns_and_trailing_blank_line(tmp_path):
    f = tmp_path / "t.csv"
    f.write_bytes(b"GeneratedTokens,TIMESTAMP,ContextTokens\r\n5,2023-11-16 18:00:00.1234567,7\r\n\r\n")
    t = read_azure_csv(f)
    assert (len(t), int(t.prompt_tokens[0]), int(t.output_tokens[0])) == (1, 7, 5)


def test_edited_file_is_read_again(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n')
    assert len(read_mooncake_jsonl(f)) == 1
    f.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n' * 2 + "\n")
    assert len(read_mooncake_jsonl(f)) == 2
    assert read_mooncake_jsonl(f).prefix_blocks == ((), ())  # hash_ids are optional


# --- one error per kind of bad input: message is path:line: reason ---------------------------------------

ROW = "2023-11-16 18:00:00.0000000,10,5\n"

AZURE_BAD = [
    ("", 1, "empty file"),
    ("TIMESTAMP,Context,GeneratedTokens\n" + ROW, 1, "lacks column.*ContextTokens"),
    ("time,in,out\n", 1, "lacks column.*TIMESTAMP"),
    (AZURE_HEADER, 2, "no data rows"),
    (AZURE_HEADER + ROW + "yesterday,10,5\n", 3, "unparsable TIMESTAMP 'yesterday'"),
    (AZURE_HEADER + ROW + "2023-11-16 18:00:01+01:00,10,5\n", 3, "unparsable TIMESTAMP.*without a timezone"),
    (AZURE_HEADER + ROW + ROW + "2023-13-16 18:00:01.0,10,5\n", 4, "not a valid date"),
    (AZURE_HEADER + ROW + "2023-11-16 18:00:01,12.5,5\n", 3, "ContextTokens is not an integer: '12.5'"),
    (AZURE_HEADER + ROW + "2023-11-16 18:00:01,10,\n", 3, "GeneratedTokens is not an integer: ''"),
    (AZURE_HEADER + ROW + "2023-11-16 18:00:01,-3,5\n", 3, r"ContextTokens is negative \(-3\)"),
    (
        AZURE_HEADER + ROW + "2023-11-16 18:00:01,0,5\n",
        3,
        "ContextTokens is 0; both token counts must be >= 1",
    ),
    (AZURE_HEADER + ROW + "2023-11-16 18:00:01,10,0\n", 3, "GeneratedTokens is 0; .*produces at least one"),
    (AZURE_HEADER + ROW + "\n" + "2023-11-16 18:00:01,10\n", 4, "expected 3 fields, got 2"),
]


def bad_trace(read, f, text: str, line: int, reason: str) -> TraceFormatError:
    """The error ``read`` raises on ``text`` written to ``f``: it matches ``reason`` and starts
    ``f:line:``."""
    f.write_text(text)
    with pytest.raises(TraceFormatError, match=reason) as info:
        read(f)
    assert str(info.value).startswith(f"{f}:{line}: ")
    return info.value


@pytest.mark.parametrize(("text", "line", "reason"), AZURE_BAD)
def test_azure_errors_name_file_and_line(tmp_path, text, line, reason):
    err = bad_trace(read_azure_csv, tmp_path / "bad.csv", text, line, reason)
    assert (err.path, err.line) == (str(tmp_path / "bad.csv"), line)


GOOD = '{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [0, 1]}\n'

MOONCAKE_BAD = [
    ("", 1, "empty file"),
    ("\n\n", 1, "empty file"),
    (GOOD + '{"timestamp": 1000, "input_length": 10,\n', 2, "malformed JSON"),
    (GOOD + "\n" + "[1, 2, 3]\n", 3, "expected a JSON object, got list"),
    (GOOD + '{"timestamp": 1000, "output_length": 5}\n', 2, "missing key.*input_length"),
    (GOOD + '{"input_length": 1, "output_length": 5}\n', 2, "missing key.*timestamp"),
    (GOOD + '{"timestamp": "soon", "input_length": 1, "output_length": 5}\n', 2, "timestamp must be"),
    (
        GOOD + '{"timestamp": 1, "input_length": 1.5, "output_length": 5}\n',
        2,
        "input_length is not an integer",
    ),
    (
        GOOD + '{"timestamp": 1, "input_length": 7, "output_length": -2}\n',
        2,
        r"output_length is negative \(-2\)",
    ),
    (GOOD + '{"timestamp": 1, "input_length": 0, "output_length": 5}\n', 2, "input_length is 0; both token"),
    (GOOD + '{"timestamp": 1, "input_length": 7, "output_length": 0}\n', 2, "output_length is 0; both token"),
    (GOOD + '{"timestamp": 1, "input_length": 7, "output_length": 3, "hash_ids": [1, "a"]}\n', 2, "hash_ids"),
]


@pytest.mark.parametrize(("text", "line", "reason"), MOONCAKE_BAD)
def test_mooncake_errors_name_file_and_line(tmp_path, text, line, reason):
    bad_trace(read_mooncake_jsonl, tmp_path / "bad.jsonl", text, line, reason)
