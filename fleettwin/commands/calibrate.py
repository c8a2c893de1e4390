"""``fleettwin data calibrate``: fit and check the performance model against measured data.

fleettwin data calibrate fit RUN... [--format F] [--settings S.yaml] [--base PROFILE] --out PROFILE.yaml
fleettwin data calibrate report [--models calibrated,roofline,profiled] [--runs FILE...] [--no-loro] --out DIR
fleettwin data calibrate kernels DIR --gpu GPU --name NAME --out PROFILE.yaml
fleettwin data calibrate show [PROFILE]
fleettwin data calibrate convert RUN --settings S.yaml --out runs.yaml
fleettwin data calibrate tables --report DIR            (also: fleettwin data calibrate --report DIR)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from fleettwin.commands._common import command_parser
from fleettwin.models.errors import ConfigError

FORMATS_HELP = (
    "fleettwin, loadgen, lmbench, silicon, vllm-bench, inference-perf, guidellm, prometheus "
    "(default: detected from the file)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers,
        "calibrate",
        __doc__,
        _legacy_or_help,
        help="fit the performance model to measured vLLM runs and report its error",
        description=(
            "Fit a calibration profile (kernel laws + engine and API-server costs) from measured serving "
            "runs, and check it: every measured run replayed in the simulator next to the measurement. Run "
            "`fleettwin data calibrate ACTION --help` for each action. Profiles are YAML; a scenario names "
            "one as `perf_model: {name: calibrated, params: {profile: NAME_OR_PATH}}`."
        ),
    )
    parser.add_argument("--report", type=Path, metavar="DIR", help=argparse.SUPPRESS)  # old form of `tables`
    parser.add_argument("--every", type=int, default=2, help=argparse.SUPPRESS)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    for add in (_add_fit, _add_report, _add_kernels, _add_show, _add_convert, _add_tables):
        add(actions)
    parser.set_defaults(parser=parser)


def _legacy_or_help(args: argparse.Namespace) -> int:
    if (
        args.report is not None
    ):  # `fleettwin data calibrate --report DIR`, the form before the actions existed
        from fleettwin.commands import calibrate_tables

        return calibrate_tables.run(args)
    args.parser.print_help()
    return 2


def _add_tables(actions: argparse._SubParsersAction) -> None:
    """``calibrate tables``: the profiled model on held-out rows (``calibrate_tables``)."""
    p = actions.add_parser("tables", help="error of the profiled model on held-out rows of Vidur's tables")
    from fleettwin.commands import calibrate_tables

    calibrate_tables.add_arguments(p)
    p.set_defaults(func=calibrate_tables.run)


def _action(
    actions: argparse._SubParsersAction, run: Callable[[argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    """The parser of the action ``run`` carries out, named after it: ``help`` is its line in the list of
    actions, ``run``'s docstring its description (argparse re-flows it), so that the two are written once."""
    p = actions.add_parser(run.__name__.lstrip("_"), help=help, description=run.__doc__)
    p.set_defaults(func=run)
    return p


def _say(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def _read(paths: list[Path], fmt: str | None, settings: Path | None):
    from fleettwin.sim.calibration.readers import load_settings, read_runs

    parsed = load_settings(settings) if settings else None
    runs = []
    for path in paths:
        runs += read_runs(path, settings=parsed, fmt=fmt)
    if not runs:
        raise ConfigError("no runs read")
    return runs


def _add_fit(actions: argparse._SubParsersAction) -> None:
    """``calibrate fit``: a profile fitted on measured runs."""
    p = _action(actions, _fit, help="fit a profile's engine and API-server costs on measured runs")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run files or folders")
    p.add_argument("--format", dest="fmt", help=FORMATS_HELP)
    p.add_argument(
        "--settings",
        type=Path,
        help="server settings YAML (model, gpu, tp, engine args) for formats that do not record them",
    )
    p.add_argument(
        "--base",
        default="auto",
        help="profile to start from: built-in name or path (default: the built-in profile of the runs' GPU)",
    )
    p.add_argument("--name", help="name of the new profile (default: the output file's name)")
    p.add_argument(
        "--coefficients",
        help="comma-separated coefficients to fit (default: all but allreduce_scale, which is fitted only "
        "when named: docs/perf_model.md)",
    )
    p.add_argument("--no-loro", action="store_true", help="skip the leave-one-run-out errors")
    p.add_argument(
        "--workers", type=int, default=None, help="processes replaying runs (default: cores, max 4)"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a coefficient could not be pinned")
    p.add_argument("--out", type=Path, required=True, help="profile YAML to write")


def _fit(args: argparse.Namespace) -> int:
    """Replay RUN files in the simulator and fit the profile's engine costs (CPU per iteration, per sequence,
    per TP worker, small kernels, kernel gaps) and API-server costs so that simulated TTFT, TPOT and E2E
    match. Prints the fitted coefficients, any it could not pin (held at the base profile's value, with the
    data that would pin them), and leave-one-run-out errors per run and metric."""
    from fleettwin.models.catalog import Catalog
    from fleettwin.models.perf.calibrated import resolve_profile
    from fleettwin.models.perf.profile import load_profile
    from fleettwin.sim.calibration.build import fit_record
    from fleettwin.sim.calibration.errors import error_frame

    runs = _read(args.runs, args.fmt, args.settings)
    gpus = sorted({r.settings.gpu for r in runs})
    if len(gpus) > 1:
        raise ConfigError(
            f"runs on several GPUs ({', '.join(gpus)}): a profile describes one GPU type; fit each apart"
        )
    base = (
        resolve_profile(args.base, Catalog.default().gpu(gpus[0]))
        if args.base == "auto"
        else load_profile(args.base)
    )
    coefficients = args.coefficients.split(",") if args.coefficients else None
    print(
        f"fitting {base.name} on {len(runs)} runs ({len({r.group for r in runs})} deployments)",
        file=sys.stderr,
    )
    import time

    t0 = time.perf_counter()
    from fleettwin.sim.calibration.fit import DEFAULT_FREE, fit_profile

    steps = _fit_per_step(runs, base, coefficients)
    refit = True
    if steps is not None:
        base = steps.profile
        coefficients = [n for n in coefficients or DEFAULT_FREE if n not in steps.fitted]
        if not coefficients:  # nothing left for the simulator: it only replays, for the errors
            coefficients, refit = list(steps.fitted), False
    res = fit_profile(
        runs,
        base,
        coefficients=coefficients,
        loro=not args.no_loro,
        workers=args.workers,
        refit=refit,
        progress=_say,
    )
    if steps is not None:
        res.fitted = {**steps.fitted, **res.fitted}
        res.rse = {**steps.rse, **res.rse}
    name = args.name or args.out.stem
    record = fit_record(res, time.perf_counter() - t0)
    if steps is not None:
        record["per_step"] = steps.record()
    fit = {**base.fit, "engine": record}
    profile = res.profile.model_copy(
        update={"name": name, "fit": fit, "sources": sorted({r.source for r in runs})}
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(profile.to_yaml())
    tmp.replace(args.out)
    print("\nfitted:")
    for n, v in res.fitted.items():
        print(f"  {n:<20} {v:.4g}  (relative standard error {res.rse[n]:.0%})")
    for n, why in res.held.items():
        print(f"  NOT PINNED {n}: {why}")
    if res.loro:
        frame = error_frame(runs, res.loro, model="leave-one-run-out")
        print("\nleave-one-run-out error per run (simulated / measured - 1):")
        table = frame.pivot_table(index="key", columns="metric", values="error")
        print(table.to_string(float_format=lambda v: f"{v:+.1%}"))
    print(f"\nwrote {args.out}")
    return 1 if args.strict and res.held else 0


def _fit_per_step(runs, base, coefficients: list[str] | None):
    """The per-step fit (``calibration/steps.py``) of the decode costs, where runs timed every token; None
    where none did or none of those coefficients is asked for."""
    from fleettwin.sim.calibration.steps import STEP_COEFFICIENTS, fit_steps, has_token_times

    timed = [r for r in runs if has_token_times(r)]
    names = [n for n in STEP_COEFFICIENTS if coefficients is None or n in coefficients]
    if not timed or not names:
        return None
    steps = fit_steps(timed, base, coefficients=names)
    record = steps.record()
    errors = record["median_abs_step_error"]
    print(
        f"per step: {record['token_gaps']} inter-token gaps in decode-only iterations of {record['runs']} "
        f"runs with per-token times; median |step time error| {errors['in_sample']:.1%} in sample, "
        f"{errors['leave_one_run_out']:.1%} leave-one-run-out"
    )
    for n, v in steps.fitted.items():
        print(f"  {n:<20} {v:.4g}  (relative standard error {steps.rse[n]:.0%}; per step)")
    for n, why in steps.held.items():
        if not why.startswith("not asked"):
            print(f"  per step, not pinned: {n}: {why}")
    return steps


def _add_report(actions: argparse._SubParsersAction) -> None:
    """``calibrate report``: every run simulated next to its measurement."""
    p = _action(actions, _report, help="every measured run simulated next to its measurement")
    p.add_argument(
        "--models", default="calibrated,roofline,profiled", help="comma-separated (default %(default)s)"
    )
    p.add_argument(
        "--runs", nargs="*", type=Path, default=None, help="run files (default: the shipped corpus)"
    )
    p.add_argument("--no-loro", action="store_true", help="in-sample errors only (fast)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, help="folder for errors.csv, report.md and the plot")


def _report(args: argparse.Namespace) -> int:
    """Simulate every run (default: the public runs shipped with fleettwin) with each performance model and
    compare with the measurement: median |error| of mean TTFT, TPOT, E2E and p99 E2E per source, saturation
    disagreements, a plot of predicted against measured. The calibrated model is shown in sample and,
    refitted without each run / each deployment, leave-one-out."""
    from fleettwin.sim.calibration.build import shipped_runs
    from fleettwin.sim.calibration.report import markdown, plot, summary_table, validation_frame

    runs = _read(args.runs, None, None) if args.runs else shipped_runs()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    errors = validation_frame(runs, models, loro=not args.no_loro, workers=args.workers, progress=_say)
    args.out.mkdir(parents=True, exist_ok=True)
    errors.to_csv(args.out / "errors.csv", index=False)
    table = summary_table(errors)
    text = "Median |simulated / measured - 1| over the metrics each run vouches for:\n\n" + markdown(table)
    per_gpu = summary_table(errors, by="gpu")
    text += "\n\nThe same per GPU:\n\n" + markdown(per_gpu[per_gpu["source"] != "all"], by="GPU")
    unfitted = summary_table(errors, fitted=False)
    if not unfitted.empty and unfitted[["ttft_mean", "tpot_mean", "e2e_mean"]].notna().to_numpy().any():
        text += (
            "\n\nMetrics the runs mark unfitted (shown, never fitted on; see each run's notes):\n\n"
            + markdown(unfitted[unfitted["source"] != "all"])
        )
    (args.out / "report.md").write_text(text + "\n")
    plot(errors, args.out / "predicted_vs_measured.png")
    print(text)
    print(f"\nwrote {args.out / 'errors.csv'}, report.md, predicted_vs_measured.png")
    return 0


def _add_kernels(actions: argparse._SubParsersAction) -> None:
    """``calibrate kernels``: kernel laws from measured kernel tables."""
    p = _action(actions, _kernels, help="fit kernel laws from a folder of measured kernel tables")
    p.add_argument("folder", type=Path)
    p.add_argument("--gpu", required=True, help="catalog GPU id the tables were measured on")
    p.add_argument("--name", required=True)
    p.add_argument("--base", default=None, help="take engine costs from this profile (default: H100 priors)")
    p.add_argument("--out", type=Path, required=True)


def _kernels(args: argparse.Namespace) -> int:
    """Fit the GEMM, attention, MoE and all-reduce laws of one GPU from measured kernel tables
    (aiconfigurator's vLLM collector format: gemm_perf.*.csv, context_/generation_attention_perf.csv,
    moe_perf.*.csv, custom_allreduce_perf.csv) and write a profile whose engine costs are priors: then
    `calibrate fit` it on end-to-end runs of that GPU."""
    from fleettwin.models.catalog import Catalog
    from fleettwin.models.perf.profile import CalibrationProfile, load_profile
    from fleettwin.sim.calibration.kernel_tables import fit_kernel_folder

    Catalog.default().gpu(args.gpu)  # an unknown GPU fails here, with the list
    laws, summary = fit_kernel_folder(args.folder)
    base = load_profile(args.base or "h100-vllm-v1")
    profile = CalibrationProfile(
        name=args.name,
        gpu=args.gpu,
        kernels=laws,
        engine_costs=base.engine_costs,
        frontend=base.frontend,
        engine_versions=f"kernels: {args.folder}",
        description=f"kernel laws from {args.folder}; engine costs from {base.name} until fitted",
        sources=[str(args.folder)],
        fit={"kernels": {"source": str(args.folder), "laws": summary}},
    )
    args.out.write_text(profile.to_yaml())
    for law, s in summary.items():
        print(f"  {law:<24} rows {s['rows']:>6}  MAPE {s['mape']:.1%}  bias {s['bias']:+.1%}")
    print(
        f"wrote {args.out} (engine costs are {base.name}'s until `fleettwin data calibrate fit --base "
        f"{args.out}`)"
    )
    return 0


def _add_show(actions: argparse._SubParsersAction) -> None:
    """``calibrate show``: a profile, or the list of built-in ones."""
    p = _action(actions, _show, help="print a profile (default: list the built-in ones)")
    p.add_argument("profile", nargs="?")


def _show(args: argparse.Namespace) -> int:
    from fleettwin.models.perf.profile import builtin_profiles, load_profile

    if not args.profile:
        for name in builtin_profiles():
            p = load_profile(name)
            print(f"{name:<16} {p.gpu:<10} {p.engine_versions}")
        return 0
    print(load_profile(args.profile).to_yaml())
    return 0


def _add_convert(actions: argparse._SubParsersAction) -> None:
    """``calibrate convert``: runs rewritten in fleettwin's run format."""
    p = _action(actions, _convert, help="write measured runs in fleettwin's run format")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--format", dest="fmt", help=FORMATS_HELP)
    p.add_argument("--settings", type=Path)
    p.add_argument("--source", default="", help="citation for the file's source line")
    p.add_argument("--out", type=Path, required=True)


def _convert(args: argparse.Namespace) -> int:
    """Read runs in any supported format and write them as a fleettwin run file (YAML + per-request CSVs),
    e.g. to keep a corpus of your own deployments."""
    from fleettwin.sim.calibration.readers import native

    runs = _read(args.runs, args.fmt, args.settings)
    native.write(args.out, runs, source=args.source or ", ".join(sorted({r.source for r in runs})))
    print(f"wrote {len(runs)} run(s) to {args.out}")
    return 0
