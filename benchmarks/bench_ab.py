"""A/B speed of the simulator: this working tree against an earlier commit, alternating runs in one session.

The machine is shared, so a single run of each side says little: runs alternate A, B, A, B ... (each a fresh
process running ``bench_serving.py --json`` on identical requests) and the report gives the ratio of the
medians. The earlier commit is checked out into a temporary ``git worktree`` and imported through a shim
folder that maps ``fleettwin``, ``fleettwin.models``, ``fleettwin.sim`` and ``fleettwin.live`` to its folders,
ahead of the editable install (nothing is installed, and the worktree is removed afterwards). Both sides run
the *current* ``bench_serving.py``, and both sides must simulate alike: the events count and the E2E sum are
compared.

``--instructions`` counts machine instructions instead (valgrind's cachegrind, ``I refs``), which does not
depend on what else the machine runs: each side runs once simulating and once only setting up (imports, trace,
pool), and the difference is the instructions the simulation took. About 50x slower than a plain run.

    .venv/bin/python benchmarks/bench_ab.py --base 5d4238b --rounds 5
    .venv/bin/python benchmarks/bench_ab.py --base 5d4238b --instructions --replicas 8 64
    .venv/bin/python benchmarks/bench_ab.py --base HEAD --pure-b     # compiled hot path against pure Python
    # a performance model's cost
    .venv/bin/python benchmarks/bench_ab.py --base db52bd0 --replicas 64 --a-perf-model calibrated \\
        --b-perf-model roofline

The compiled hot path (``fleettwin/native.py``) is used by any side whose source it was built from;
``--pure-b`` runs side B with ``FLEETTWIN_PURE_PYTHON=1`` (set that variable for the whole command to compare
pure with pure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_serving.py"
PACKAGES = {"models": "models", "sim": "sim", "live": "live"}  # fleettwin.<key> lives in <value>/


def make_shim(tree: Path, shim: Path) -> None:
    """``shim/fleettwin`` whose modules are ``tree``'s (symlinks), so ``PYTHONPATH=shim`` imports that
    tree."""
    pkg = shim / "fleettwin"
    pkg.mkdir(parents=True)
    for entry in (tree / "fleettwin").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for name, folder in PACKAGES.items():
        (pkg / name).symlink_to(tree / folder)


def _run(
    pythonpath: str | None, args: list[str], prefix: tuple[str, ...] = (), pure: bool = False
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED="0")
    if pure:
        env["FLEETTWIN_PURE_PYTHON"] = "1"
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [*prefix, sys.executable, str(BENCH), "--json", *args]
    # Run outside the repository: its root on sys.path would shadow the shim with this tree's ``fleettwin``.
    return subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True)


def run_side(
    pythonpath: str | None,
    replicas: list[int],
    requests: int | None,
    pure: bool = False,
    perf_model: str | None = None,
) -> dict[int, dict]:
    extra = ["--requests", str(requests)] if requests else []
    extra += ["--perf-model", perf_model] if perf_model else []
    out = _run(pythonpath, ["--replicas", *map(str, replicas), *extra], pure=pure)
    return {r["replicas"]: r for r in map(json.loads, out.stdout.splitlines())}


def instructions(pythonpath: str | None, replicas: int, requests: int | None, pure: bool = False) -> int:
    """Instructions one simulation of ``replicas`` takes: a run that simulates minus one that only sets up."""
    grind = ("valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null")
    extra = ["--requests", str(requests)] if requests else []
    refs = []
    for sims in (1, 0):
        out = _run(pythonpath, ["--replicas", str(replicas), "--simulations", str(sims), *extra], grind, pure)
        refs.append(int(re.search(r"I\s+refs:\s+([\d,]+)", out.stderr).group(1).replace(",", "")))
    return refs[0] - refs[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="5d4238b", help="the earlier commit (B)")
    ap.add_argument("--a", default=None, help="a commit for A instead of the working tree")
    ap.add_argument("--rounds", type=int, default=5, help="A/B pairs")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument(
        "--instructions", action="store_true", help="count instructions under valgrind (one run each)"
    )
    ap.add_argument(
        "--pure-b", action="store_true", help="run side B in pure Python (FLEETTWIN_PURE_PYTHON=1)"
    )
    ap.add_argument(
        "--a-perf-model", help="performance model of side A (default: that tree's scenario default)"
    )
    ap.add_argument("--b-perf-model", help="performance model of side B")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ft-ab-") as tmp:
        trees = {side: Path(tmp) / side for side, rev in (("a", args.a), ("b", args.base)) if rev}
        for side, tree in trees.items():
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(ROOT),
                    "worktree",
                    "add",
                    "--detach",
                    str(tree),
                    args.a if side == "a" else args.base,
                ],
                check=True,
                capture_output=True,
            )
        try:
            shim = Path(tmp) / "shim"
            make_shim(trees["b"], shim)
            a_path = None
            if "a" in trees:
                a_path = str(Path(tmp) / "shim-a")
                make_shim(trees["a"], Path(a_path))
            if args.instructions:
                print(
                    f"instructions per simulation (valgrind cachegrind), A = {args.a or 'working tree'}, B = "
                    f"{args.base}"
                )
                print(f"{'replicas':>8} {'A instr':>15} {'B instr':>15} {'A/B':>6} {'A instr/req':>11}")
                for r in args.replicas:
                    a = instructions(a_path, r, args.requests)
                    b = instructions(str(shim), r, args.requests, args.pure_b)
                    n = args.requests or int(3000 * r**0.7)
                    print(f"{r:>8} {a:>15,} {b:>15,} {a / b:>6.3f} {a / n:>11,.0f}", flush=True)
                return
            runs: dict[str, list[dict[int, dict]]] = {"A": [], "B": []}
            for k in range(args.rounds):
                order = (("A", a_path), ("B", str(shim)))
                for side, path in order if k % 2 == 0 else order[::-1]:
                    runs[side].append(
                        run_side(
                            path,
                            args.replicas,
                            args.requests,
                            side == "B" and args.pure_b,
                            args.a_perf_model if side == "A" else args.b_perf_model,
                        )
                    )
                    print(
                        f"round {k + 1} {side}: "
                        + ", ".join(
                            f"{r}x {runs[side][-1][r]['req_per_s']:,.0f} req/s" for r in args.replicas
                        ),
                        flush=True,
                    )
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True
                )

    b_name = f"{args.base}{' (pure Python)' if args.pure_b else ''}"
    print(
        f"\nA = {args.a or 'working tree'}, B = {b_name}; medians of {args.rounds} runs each "
        f"(req/s: wall clock; req/cpu-s: this process's CPU time)"
    )
    print(
        f"{'replicas':>8} {'requests':>8} {'A req/s':>9} {'B req/s':>9} {'A/B':>6} "
        f"{'A req/cpu-s':>11} {'B req/cpu-s':>11} {'A/B':>6} {'A events':>9} {'B events':>9}  same results"
    )
    for r in args.replicas:
        a = [run[r] for run in runs["A"]]
        b = [run[r] for run in runs["B"]]
        med = {
            key: (statistics.median(x[key] for x in a), statistics.median(x[key] for x in b))
            for key in ("req_per_s", "req_per_cpu_s")
        }
        same = a[0]["e2e_sum"] == b[0]["e2e_sum"]  # bit-identical latencies (the event count may differ)
        (wa, wb), (ca, cb) = med["req_per_s"], med["req_per_cpu_s"]
        print(
            f"{r:>8} {a[0]['requests']:>8} {wa:>9,.0f} {wb:>9,.0f} {wa / wb:>6.3f} "
            f"{ca:>11,.0f} {cb:>11,.0f} {ca / cb:>6.3f} {a[0]['events']:>9,} {b[0]['events']:>9,}  "
            f"{'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
