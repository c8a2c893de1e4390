"""The planner's files: plan.csv (every simulation), plan.json, plan.md (the answer in words and tables),
plan.png, and recommended.yaml: the complete scenario of the recommended deployment, runnable as it is."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from fleettwin.io import write_csv, write_json, write_text
from fleettwin.models.config import load_scenario, parse_scenario, scenario_mapping
from fleettwin.sim.planning.plan import Choice, PlanResult


def write_plan(result: PlanResult, out: str | Path) -> list[Path]:
    out = Path(out)
    paths = [write_csv(out / "plan.csv", result.table)]
    paths.append(
        write_json(
            out / "plan.json",
            {
                **result.meta,
                "wall_time_s": result.wall_time_s,
                "skipped": [list(s) for s in result.skipped],
                "searches": [_search_record(s) for s in result.searches],
            },
        )
    )
    picks = {rate: ch[0] for rate, ch in result.best.items() if ch}
    if picks:
        top = max(picks)  # the highest rate asked (with a budget alone: the one key there is)
        paths.append(write_scenario(result, picks[top], out / "recommended.yaml"))
        if len(picks) > 1:
            for rate, choice in picks.items():
                paths.append(write_scenario(result, choice, out / f"recommended_{rate:g}rps.yaml"))
    paths.append(write_text(out / "plan.md", plan_markdown(result)))
    if not result.table.empty:
        from fleettwin.sim.planning.plot import plot_plan

        paths.append(plot_plan(result, out / "plan.png"))
    return paths


def _search_record(s: dict) -> dict:
    return {k: v for k, v in s.items() if k != "rows"}


def write_scenario(result: PlanResult, choice: Choice, path: Path) -> Path:
    """The scenario with the choice's overrides, trace paths made absolute (the file lives elsewhere) and the
    performance model written out (the run is reproduced even if the default changes); validated before
    it is written."""
    scenario = Path(result.meta["scenario"])
    data = scenario_mapping(scenario, choice.overrides)
    cfg = load_scenario(scenario, choice.overrides)
    pool = next(p for p in cfg.pools if p.name == result.meta["pool"])
    for p in data["pools"]:
        if p.get("name") == pool.name:
            p["perf_model"] = pool.perf_model.model_dump()
    data = absolute_paths(data, scenario.resolve().parent)
    data["name"] = f"{cfg.name}-plan"
    data["description"] = (
        f"fleettwin plan: {choice.replicas} x {choice.candidate.label} at {choice.rate:g} "
        f"requests/s ({', '.join(result.meta['target_labels'])})"
    )
    parse_scenario(data, source=str(path), base_dir=path.parent)  # what `fleettwin sim run` will check
    header = (
        f"# Written by fleettwin sim plan from {scenario} (every simulation: plan.csv beside this file).\n"
        f"# Run it: fleettwin sim run {path.name}\n"
    )
    return write_text(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def absolute_paths(node: Any, base_dir: Path) -> Any:
    """Every relative ``path`` value that names an existing file from ``base_dir``, made absolute."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "path" and isinstance(v, str) and not Path(v).expanduser().is_absolute():
                candidate = (base_dir / v).resolve()
                out[k] = str(candidate) if candidate.is_file() else v
            else:
                out[k] = absolute_paths(v, base_dir)
        return out
    if isinstance(node, list):
        return [absolute_paths(v, base_dir) for v in node]
    return node


def describe(choice: Choice) -> str:
    """``7 x h100-80g TP4 bf16 = 28 GPUs, 75.32 USD/h, 0.64 USD/1M tokens``."""
    r = choice.row
    per_tok = (
        "" if math.isnan(r["usd_per_1m_tokens"]) else f", {r['usd_per_1m_tokens']:.3f} USD per 1M tokens"
    )
    return (
        f"{choice.replicas} x {choice.candidate.label} = {r['gpus']} GPUs, {r['usd_per_hour']:.2f} USD/h"
        f"{per_tok} (TTFT p95 {r['ttft_p95_s']:.2f} s, TPOT p95 {1e3 * r['tpot_p95_s']:.1f} ms)"
    )


def answer_lines(result: PlanResult) -> list[str]:
    """The recommendation and the runner-up, per rate (or for the budget), as sentences."""
    lines = []
    for rate, choices in result.best.items():
        if not choices:
            continue
        head = (
            f"at {rate:g} requests/s"
            if rate >= 0
            else f"within {result.meta['budget_usd_h']:g} USD/h: up to {choices[0].rate:g} requests/s"
        )
        lines.append(f"{head}: {describe(choices[0])}")
        if len(choices) > 1:
            extra = f" at {choices[1].rate:g} requests/s" if rate < 0 else ""
            lines.append(f"  runner-up{extra}: {describe(choices[1])}")
    asked = set(result.meta["rates"]) if result.meta["rates"] else {-1.0}
    for rate in sorted(asked - set(result.best)):
        what = f"at {rate:g} requests/s" if rate >= 0 else "within the budget"
        lines.append(
            f"{what}: no candidate meets the targets (up to {result.question.max_replicas} replicas"
            f"{' and the budget' if result.meta['budget_usd_h'] else ''})"
        )
    return lines


def plan_markdown(result: PlanResult) -> str:
    m, t = result.meta, result.table
    lines = [
        f"# Capacity plan: {Path(m['scenario']).name}, pool {m['pool']} ({m['model']})",
        "",
        f"Targets (over all requests; a request that does not complete counts as late): "
        f"{', '.join(m['target_labels'])}.",
        f"Workload: {Path(m['scenario']).name} at {m['base_rate']:.3g} requests/s as written (mean prompt "
        f"{m['mix']['prompt_tokens']:.0f}, output {m['mix']['output_tokens']:.0f} tokens), scaled with "
        "workload.rate_scale (shifted copies / thinning: the trace keeps its clock); seed "
        f"{m['seed']}.",
        "",
        "## Answer",
        "",
    ]
    lines += [f"- {line.strip()}" for line in answer_lines(result)]
    lines += ["", "## Candidates", "", _candidate_table(result), ""]
    if result.skipped:
        lines += ["Not simulated:", ""] + [f"- {label}: {why}" for label, why in result.skipped] + [""]
    errors = [s for s in result.searches if s.get("error")]
    if errors:
        lines += ["Failed searches:", ""] + [f"- {s['candidate']}: {s['error']}" for s in errors] + [""]
    stopped = int((t["stopped_early"] != "").sum()) if not t.empty else 0
    lines += [
        f"{len(t)} simulations ({stopped} stopped early once a target was lost) on "
        f"{m['executor']['name']} with {m['executor'].get('jobs', '?')} workers in "
        f"{result.wall_time_s:.1f} s. Every simulation is a row of plan.csv; the recommended deployment is "
        "recommended.yaml (`fleettwin sim run recommended.yaml`).",
        "",
    ]
    return "\n".join(lines)


def _candidate_table(result: PlanResult) -> str:
    """One row per search: the candidate's least replicas (or highest rate) and what it costs."""
    rows = []
    for s in result.searches:
        best, rows_of = s.get("best"), [r for r in s.get("rows", []) if r["meets_slo"]]
        if s.get("replicas") is None:
            hit = next((r for r in rows_of if r["replicas"] == best), None)
            what = f"{s['rate']:g} req/s" if s.get("rate") is not None else ""
            found = f"{best} replicas" if best is not None else "none within the limit"
        else:
            hit = next((r for r in rows_of if r["rate"] == best), None)
            what = f"{s['replicas']} replicas"
            found = f"{best:g} req/s" if best is not None else "fails at every rate tried"
        cost = f"{hit['usd_per_hour']:.2f}" if hit else "-"
        per_tok = (
            f"{hit['usd_per_1m_tokens']:.3f}" if hit and not math.isnan(hit["usd_per_1m_tokens"]) else "-"
        )
        ttft = f"{hit['ttft_p95_s']:.2f}" if hit else "-"
        tpot = f"{1e3 * hit['tpot_p95_s']:.1f}" if hit else "-"
        sims = len(s.get("rows", []))
        rows.append([s["candidate"], what, found, cost, per_tok, ttft, tpot, str(sims)])
    head = [
        "candidate",
        "for",
        "result",
        "USD/h",
        "USD/1M tok",
        "TTFT p95 (s)",
        "TPOT p95 (ms)",
        "simulations",
    ]
    return _md_table(head, rows)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
