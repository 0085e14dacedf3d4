"""The `bnconform` command line. Every usage error is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + exits 2; we keep it to one line
        raise UsageError(f"{self.prog}: {message}")


def _cmd_cases(args) -> int:
    from .cases import cases_for_tier

    for case in cases_for_tier(args.tier):
        print(f"{case.id:60s} {case.tier:8s} {case.note}")
    return 0


def _cmd_oracle(args) -> int:
    from reference import Convention, simulate

    from .cases import case_by_id, cases_for_tier
    from .inputs import materialize

    cases = [case_by_id(i) for i in args.case] if args.case else cases_for_tier(args.tier)
    np.set_printoptions(precision=6, suppress=False, linewidth=110, threshold=12, edgeitems=3)
    for case in cases:
        trace = simulate(materialize(case), Convention(), second_order=False)
        print(f"== {case.id}  ({case.note})")
        for name in ("running_mean", "running_var", "dgamma", "dbeta"):
            if name in trace.quantities and name not in trace.not_applicable:
                print(f"   {name:14s} {trace[name][-1] if trace[name].ndim > 1 else trace[name]}")
        print(f"   {'y[last]':14s} {trace['y'][-1].reshape(-1)}")
    return 0


def _cmd_run(args) -> int:
    from .runner import RunError, RunOptions, run

    if args.jobs < 0:
        raise UsageError("bnconform run: --jobs must be >= 0")
    if args.case_timeout <= 0 or args.adapter_timeout <= 0:
        raise UsageError("bnconform run: timeouts must be positive")
    opts = RunOptions(frameworks=args.frameworks, tier=args.tier, paths=args.paths, out=args.out, jobs=args.jobs,
                      case_timeout=args.case_timeout, adapter_timeout=args.adapter_timeout,
                      registry=args.registry, strict=args.strict, report=not args.no_report)
    baseline_paths = {}
    for kind in ("save_baseline", "compare_baseline"):
        name = getattr(args, kind)
        if name:
            from .diffview import baseline_path

            try:
                baseline_paths[kind] = baseline_path(args.out, name)
            except ValueError as e:
                raise UsageError(f"bnconform run: {e}") from None
    fail_on = None
    if "compare_baseline" in baseline_paths:
        from . import diff as diffmod
        from .diffview import load_baseline
        from .results import ResultsError

        try:
            fail_on = diffmod.parse_fail_on(args.fail_on or [])
            baseline = load_baseline(baseline_paths["compare_baseline"])  # refuse before running, not after
        except (ValueError, ResultsError) as e:
            raise UsageError(f"bnconform run: {e}") from None
    try:
        status = run(opts)
    except RunError as e:
        raise UsageError(f"bnconform run: {e}") from None
    if opts.run_dir is None or status == 130:
        return status
    return _baselines(opts.run_dir, baseline_paths, args, fail_on, baseline if fail_on is not None else None,
                      status)


def _baselines(run_dir, paths, args, fail_on, baseline, status: int) -> int:
    """After a run: compare it with a kept baseline (gate), then keep it as a baseline if asked."""
    from rich.console import Console

    from . import diff as diffmod
    from . import results
    from .diffview import baseline_json, print_terminal

    console = Console(width=160)
    rs = results.load([run_dir])
    if baseline is not None:
        try:
            d = diffmod.diff(baseline, rs)
        except diffmod.DiffRefused as e:
            raise UsageError(f"bnconform run: cannot compare with baseline {args.compare_baseline!r}: {e}") from None
        print_terminal(d, console)
        reasons = diffmod.gate(d, fail_on)
        console.print(f"baseline {args.compare_baseline}: " + (f"FAIL ({', '.join(reasons)})" if reasons else "pass"),
                      highlight=False)
        if reasons:
            status = max(status, 1)
    if "save_baseline" in paths:
        path = results.write_atomic(paths["save_baseline"], baseline_json(rs, args.save_baseline))
        console.print(f"baseline saved: {path}", highlight=False, markup=False)
    return status


def _cmd_report(args) -> int:
    from pathlib import Path

    from . import report, results

    try:
        rs = results.load(args.results)
    except results.ResultsError as e:
        raise UsageError(f"bnconform report: {e}") from None
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"bnconform report: --out {out} is a directory; name the HTML file to write")
    try:
        path = report.write(rs, out)
    except OSError as e:
        raise UsageError(f"bnconform report: cannot write {out}: {e.strerror or e}") from None
    for w in rs.warnings:
        print(f"bnconform report: warning: {w}", file=sys.stderr)
    sys.stderr.flush()
    print(f"report: {path} ({len(rs.records)} checks from {len(rs.sources)} results file(s))")
    return 0


def _cmd_port(args) -> int:
    from .port import port

    momentum, given = None, False
    if args.momentum is not None:
        given = True
        if args.momentum.lower() not in ("none", "cumulative"):
            try:
                momentum = float(args.momentum)
            except ValueError:
                raise UsageError(f"bnconform port: --momentum must be a number or 'none', not {args.momentum!r}")
    print(port(args.source, args.target, momentum=momentum, eps=args.eps, momentum_given=given).text())
    return 0


def _cmd_conventions(args) -> int:
    import os

    from .cases import CASES
    from .catalogue import select
    from .infer import BY_CASE_KNOB, EVAL_GRADIENT_CASE, table
    from .worker import AdapterRun, Pool, WorkerConfig

    specs = select(args.frameworks)
    missing = [s for s in specs if not s.available()]
    for s in missing:
        print(f"skip {s.name}: {', '.join(s.missing())} not installed ({s.install})", file=sys.stderr)
    cases = [c.id for c in CASES.values() if c.knob in BY_CASE_KNOB or c.knob == "eps"] + [EVAL_GRADIENT_CASE]
    records: list[dict] = []
    jobs = args.jobs or os.cpu_count() or 1
    cfg = WorkerConfig(registry_path=args.registry, threads=max(1, (os.cpu_count() or 1) // jobs))
    runs = [AdapterRun(s.name, cases, cfg, on_records=lambda cid, recs: records.extend(recs))
            for s in specs if s.available()]
    pool = Pool(runs, jobs)
    if pool.wait():
        print("bnconform: interrupted", file=sys.stderr)
        return 130
    for line in pool.failures:
        print(f"bnconform: internal error driving {line}", file=sys.stderr)
    t = table(records)
    _print_table(t)
    for line in t["disagreements"]:
        print(f"finding: {line}")
    return 0


def _print_table(t: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text when rich is absent
        print(t["title"])
        for row in [t["columns"]] + t["rows"]:
            print(" | ".join(str(c) for c in row))
        return
    table = Table(title=t["title"], caption=t.get("description"), show_lines=False)
    for c in t["columns"]:
        table.add_column(c, overflow="fold")
    for row in t["rows"]:
        table.add_row(*[str(c) for c in row])
    Console(width=max(160, len(t["columns"]) * 16)).print(table)


def _cmd_diff(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from . import diff as diffmod
    from . import results
    from .diffview import print_terminal, render_html

    try:
        fail_on = diffmod.parse_fail_on(args.fail_on or [])
    except ValueError as e:
        raise UsageError(f"bnconform diff: {e}") from None
    try:
        old, new = results.load([args.old]), results.load([args.new])
        d = diffmod.diff(old, new, drift_factor=args.drift_factor, drift_floor=args.drift_floor)
    except (results.ResultsError, diffmod.DiffRefused) as e:
        raise UsageError(f"bnconform diff: {e}") from None
    reasons = diffmod.gate(d, fail_on, drift_floor=args.drift_floor)
    console = Console(width=160)
    print_terminal(d, console)
    if args.html:
        out = Path(args.html)
        if out.is_dir():
            raise UsageError(f"bnconform diff: --html {out} is a directory; name the HTML file to write")
        html = render_html(d, str(args.old), str(args.new), reasons, args.title or f"Upgrade: {args.old} -> {args.new}")
        try:
            results.write_atomic(out, html)
        except OSError as e:
            raise UsageError(f"bnconform diff: cannot write {out}: {e.strerror or e}") from None
        console.print(f"diff page: {out}", highlight=False, markup=False)
    if reasons:
        console.print(f"gate: FAIL ({', '.join(reasons)})", highlight=False)
        return 1
    console.print("gate: pass", highlight=False)
    return 0


def _cmd_explain(args) -> int:
    from .explain import ExplainError, explain, read_array

    try:
        arrays = {k: read_array(getattr(args, k), k.replace("_", "-")) for k in (
            "x", "y", "gamma", "beta", "init_mean", "init_var", "running_mean", "running_var", "batch_mean",
            "batch_var", "dx", "dy") if getattr(args, k) is not None}
        out = explain(axis=args.axis, mode=args.mode, eps=args.eps, momentum=args.momentum, digits=args.digits,
                      dtype=args.dtype, **arrays)
    except ExplainError as e:
        raise UsageError(str(e))
    print(out["text"])
    return 0 if out["explained"] else 1


def _cmd_export(args) -> int:
    from .export import ExportError, export

    try:
        path = export(args.runner, args.tier, args.out, args.case or None)
    except ExportError as e:
        raise UsageError(f"bnconform export: {e}") from None
    import json

    manifest = json.loads(path.read_text(encoding="utf-8"))
    print(f"exported {len(manifest['cases'])} cases of tier {args.tier} for the {args.runner} runner to "
          f"{path.parent}")
    print(f"run: {manifest['how_to_run'].replace('DIR', str(path.parent))}")
    print(f"then: bnconform import {path.parent}")
    return 0


def _cmd_import(args) -> int:
    from collections import Counter

    from . import exchange
    from .import_ import load, write_results
    from .registry import Registry, RegistryError

    try:
        registry = Registry.load(args.registry)
        imported = load(args.folder)
    except (exchange.ExchangeError, RegistryError) as e:
        raise UsageError(f"bnconform import: {e}") from None
    for line in imported.rejected:
        print(f"bnconform import: left out: {line}", file=sys.stderr)
    if not imported.adapters:
        raise UsageError(f"bnconform import: {args.folder}: no usable observation (has the runner run? "
                         f"{imported.manifest['how_to_run']})")
    try:
        run_dir, counts = write_results(imported, args.out, registry, report=not args.no_report)
    except OSError as e:
        raise UsageError(f"bnconform import: cannot write {args.out}: {e.strerror or e}") from None
    for adapter in imported.adapters:
        c = counts[adapter.name]
        missing = len(imported.missing.get(adapter.runtime.name, []))
        print(f"{adapter.name} ({adapter.framework} {adapter.version}): "
              + ", ".join(f"{v} {n}" for v, n in sorted(c.items()))
              + (f"; {missing} case(s) without an observation (partial run)" if missing else ""))
    for runtime in imported.not_run:
        print(f"{runtime.name}: no observation in this folder ({runtime.not_run or 'not run'})")
    print(f"results: {run_dir}")
    if not args.no_report:
        print(f"report:  {args.out}/index.html")
    total = sum(counts.values(), Counter())
    return 1 if (total["fail"] or total["error"] or imported.rejected) else 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bnconform", description="Cross-framework BatchNorm conformance suite.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("cases", help="list the case table")
    c.add_argument("--tier", default="default", choices=["smoke", "default", "nightly"])
    c.set_defaults(func=_cmd_cases)
    o = sub.add_parser("oracle", help="print the oracle's answer (torch's convention) for cases")
    o.add_argument("case", nargs="*", help="case ids (default: every case of --tier)")
    o.add_argument("--tier", default="smoke", choices=["smoke", "default", "nightly"])
    o.set_defaults(func=_cmd_oracle)
    r = sub.add_parser("run", help="run the suite over the installed adapters; write results and the report")
    r.add_argument("--frameworks", default="all",
                   help="adapters, families or globs, comma separated (default: all core adapters; those not "
                        "installed are skipped with their install command)")
    r.add_argument("--tier", default="default", choices=["smoke", "default", "nightly"])
    r.add_argument("--paths", default=os.environ.get("BNCONFORM_PATHS", "default"),
                   help="execution paths: 'default' (eager + the paths the tier includes), 'all', 'eager', or "
                        "names/globs such as 'compile*,export-onnx' (env BNCONFORM_PATHS)")
    r.add_argument("--out", default="reports",
                   help="output directory: results in OUT/runs/<run-id>/, the report at OUT/index.html")
    r.add_argument("--jobs", type=int, default=0, help="adapter worker processes at a time (default: CPU count)")
    r.add_argument("--case-timeout", type=float, default=300.0,
                   help="seconds one adapter may spend on one case (its checks become errors past it)")
    r.add_argument("--adapter-timeout", type=float, default=3600.0,
                   help="seconds one adapter may spend on all its cases")
    r.add_argument("--registry", help="registry directory or TOML file (default: the bundled registry)")
    r.add_argument("--strict", action="store_true",
                   help="registered deviations that no longer occur (xpass) and stale entries fail the run")
    r.add_argument("--no-report", action="store_true", help="write results only")
    r.add_argument("--save-baseline", metavar="NAME", help="keep this run as baseline NAME (OUT/baselines/NAME.json)")
    r.add_argument("--compare-baseline", metavar="NAME",
                   help="gate this run against baseline NAME: regressions fail (and --fail-on categories)")
    r.add_argument("--fail-on", action="append", metavar="CATEGORY[:ARG]",
                   help="with --compare-baseline: also fail on drift[:FACTORx], convention, new, missing, ...")
    r.set_defaults(func=_cmd_run)
    rp = sub.add_parser("report", help="render results (directories or records.jsonl files) as one HTML file")
    rp.add_argument("results", nargs="+", help="results directories or files; several are merged")
    rp.add_argument("--out", default="reports/index.html", help="HTML file to write (default: %(default)s)")
    rp.set_defaults(func=_cmd_report)
    pt = sub.add_parser("port", help="map BatchNorm hyperparameters from one framework to another")
    pt.add_argument("--from", dest="source", required=True, help="source framework or adapter (torch, keras, ...)")
    pt.add_argument("--to", dest="target", required=True, help="target framework or adapter")
    pt.add_argument("--momentum", help="source's momentum in its own native form ('none': cumulative average); "
                                       "default: the source's default")
    pt.add_argument("--eps", type=float, help="eps (default: the source's default)")
    pt.set_defaults(func=_cmd_port)
    df = sub.add_parser("diff", help="compare two result sets (e.g. two framework versions): regressions, "
                                     "fixes, drift, convention changes; exit status is a CI gate")
    df.add_argument("old", help="results directory or records.jsonl of the OLD run")
    df.add_argument("new", help="results directory or records.jsonl of the NEW run")
    df.add_argument("--fail-on", action="append", metavar="CATEGORY[:ARG]",
                    help="also fail on: drift[:FACTORx], convention, registered, fix, new, missing, other (regressions always "
                         "fail); repeatable")
    df.add_argument("--drift-factor", type=float, default=10.0, help="ratio change reported as drift (default 10)")
    df.add_argument("--drift-floor", type=float, default=1e-3,
                    help="ratios below this count as this (noise in the last bits is not drift; default 1e-3)")
    df.add_argument("--html", help="write the diff as an HTML page here")
    df.add_argument("--title", help="title of the HTML page")
    df.set_defaults(func=_cmd_diff)
    cv = sub.add_parser("conventions", help="declared vs inferred conventions of the installed frameworks")
    cv.add_argument("--frameworks", default="all", help="adapters, families or globs (default: all core)")
    cv.add_argument("--jobs", type=int, default=0, help="worker processes at a time (default: CPU count)")
    cv.add_argument("--registry", default=None, help="registry dir or file")
    cv.set_defaults(func=_cmd_conventions)
    xpl = sub.add_parser("explain", help="say what a BatchNorm computation was, from its input and output "
                                        "(exit 1 when nothing explains them)")
    for name, text in (("x", "the input (required)"), ("y", "the output (required)"), ("gamma", "scale (C,)"),
                       ("beta", "shift (C,)"), ("init-mean", "running mean before the step (C,)"),
                       ("init-var", "running variance before the step (C,)"),
                       ("running-mean", "running mean after the step"), ("running-var", "running variance after"),
                       ("batch-mean", "returned batch mean"), ("batch-var", "returned batch variance"),
                       ("dx", "gradient of the input"), ("dy", "gradient fed to the output (with --dx)")):
        xpl.add_argument(f"--{name}", required=name in ("x", "y"),
                        help=f"{text}: .npy, .npz[:key], .csv or inline text like [[1, 2], [3, 4]]")
    xpl.add_argument("--axis", type=int, default=1, help="channel axis (default 1)")
    xpl.add_argument("--mode", default="train", choices=("train", "eval"), help="train (batch statistics) or eval")
    xpl.add_argument("--eps", type=float, default=1e-5, help="the eps you passed (default 1e-5)")
    xpl.add_argument("--momentum", type=float, default=0.1, help="weight on the new batch you passed (default 0.1)")
    xpl.add_argument("--digits", type=int, default=None,
                    help="decimals your numbers were printed with (default: full precision of --dtype)")
    xpl.add_argument("--dtype", default="float32", choices=("float64", "float32", "float16", "bfloat16"),
                    help="the precision you computed in (default float32)")
    xpl.set_defaults(func=_cmd_explain)
    ex = sub.add_parser("export", help="write a tier's cases and a runner for an outside runtime (TensorFlow.js "
                                       "under Node, MATLAB) into a folder; see docs/exchange.md")
    ex.add_argument("--runner", required=True, choices=["node", "matlab", "json"])
    ex.add_argument("--tier", default="default", choices=["smoke", "default", "nightly"])
    ex.add_argument("--out", required=True, help="folder to write (created; must not hold an export already)")
    ex.add_argument("--case", action="append", help="only this case id (repeatable; default: every case of --tier)")
    ex.set_defaults(func=_cmd_export)
    im = sub.add_parser("import", help="validate an exported folder's observations and turn them into results "
                                       "and the report, as for an in-process adapter")
    im.add_argument("folder", help="the folder `bnconform export` wrote, after its runner ran")
    im.add_argument("--out", default="reports", help="results in OUT/runs/<run-id>/, the report at OUT/index.html")
    im.add_argument("--registry", help="registry directory or TOML file (default: the bundled registry)")
    im.add_argument("--no-report", action="store_true", help="write results only")
    im.set_defaults(func=_cmd_import)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"bnconform: {e.args[0]}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bnconform ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("bnconform: interrupted", file=sys.stderr)
        return 130
