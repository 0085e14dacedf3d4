"""The `bnconform` command line. Every usage error is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import os
import signal
import sys


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + exits 2; we keep it to one line
        raise UsageError(f"{self.prog}: {message}")


def _cmd_cases(args) -> int:
    from .core.cases import cases_for_tier

    for case in cases_for_tier(args.tier):
        print(f"{case.id:60s} {case.tier:8s} {case.note}")
    return 0


def _cmd_oracle(args) -> int:
    import numpy as np

    from reference import Convention, simulate

    from .core.cases import case_by_id, cases_for_tier
    from .core.inputs import materialize

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
    from .execution.runner import RunError, RunOptions, run

    if args.fail_on and args.compare_baseline is None:
        raise UsageError("bnconform run: --fail-on gates a comparison: give --compare-baseline NAME too")
    opts = RunOptions(frameworks=args.frameworks, tier=args.tier, paths=args.paths, out=args.out, jobs=args.jobs,
                      case_timeout=args.case_timeout, adapter_timeout=args.adapter_timeout,
                      registry=args.registry, strict=args.strict, report=not args.no_report,
                      case_ids=tuple(args.case or ()), keyword=args.keyword)
    baseline_paths = {}
    for kind in ("save_baseline", "compare_baseline"):
        name = getattr(args, kind)
        if name is not None:  # '' is a bad name, not an absent one
            from .outputs.diffview import baseline_path

            try:
                baseline_paths[kind] = baseline_path(args.out, name)
            except ValueError as e:
                raise UsageError(f"bnconform run: {e}") from None
    fail_on = None
    if "compare_baseline" in baseline_paths:
        from .outputs import diff as diffmod
        from .outputs.diffview import load_baseline
        from .outputs.results import ResultsError

        try:
            fail_on = diffmod.parse_fail_on(args.fail_on or [])
            baseline = load_baseline(baseline_paths["compare_baseline"])  # refuse before running, not after
        except (ValueError, ResultsError) as e:
            raise UsageError(f"bnconform run: {e}") from None
    try:
        status = run(opts)
    except RunError as e:
        raise UsageError(f"bnconform run: {e}") from None
    if opts.run_dir is None or status in (130, 143):
        return status
    return _baselines(opts.run_dir, baseline_paths, args, fail_on, baseline if fail_on is not None else None,
                      status)


def _baselines(run_dir, paths, args, fail_on, baseline, status: int) -> int:
    """After a run: compare it with a kept baseline (gate), then keep it as a baseline if asked."""
    if not paths:  # neither asked: the run's records are not read again
        return status
    from .outputs import diff as diffmod
    from .outputs import results
    from .outputs.diffview import baseline_json, print_terminal, render_html
    from .execution.progress import console as progress_console

    console = progress_console()
    rs = results.load([run_dir], validate=False)  # just written through results.storable
    reasons: list[str] = []
    if baseline is not None:
        try:
            d = diffmod.diff(baseline, rs)
        except diffmod.DiffRefused as e:
            raise UsageError(f"bnconform run: cannot compare with baseline {args.compare_baseline!r}: {e}") from None
        reasons = diffmod.gate(d, fail_on)
        page = run_dir.parent.parent / f"baseline-{args.compare_baseline}.html"
        label = f"baseline {args.compare_baseline}"
        html = render_html(d, f"{label} ({paths['compare_baseline']})", str(run_dir), reasons,
                           f"This run against {label}")
        try:
            results.write_atomic(page, html)
        except OSError as e:
            raise UsageError(f"bnconform run: cannot write {page}: {e.strerror or e}") from None
        print_terminal(d, console, page=str(page))
        console.print(f"diff page: {page}", highlight=False, markup=False)
        console.print(f"{label}: " + (f"FAIL ({', '.join(reasons)}; {diffmod.REGRESSION_MEANS})" if reasons
                                      else "pass"), highlight=False, markup=False)
        if reasons:
            status = max(status, 1)
    if "save_baseline" in paths:
        path = results.write_atomic(paths["save_baseline"], baseline_json(rs, args.save_baseline))
        console.print(f"baseline saved: {path}", highlight=False, markup=False)
    if status == 1 and baseline is not None and not reasons:  # say why, when the gate alone would pass
        console.print("exit status 1: this run has failing or erroring checks of its own (listed above), "
                      "although it is no worse than the baseline", highlight=False, markup=False)
    return status


def _cmd_report(args) -> int:
    from pathlib import Path

    from .outputs import report
    from .outputs import results

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
        print(_one_line(f"bnconform report: warning: {w}"), file=sys.stderr)
    sys.stderr.flush()
    print(f"report: {path} ({len(rs.records)} checks from {len(rs.sources)} results file(s))")
    return 0


def _cmd_port(args) -> int:
    from .explain.port import PortError, port
    from .explain.state import StateError

    from .core.validation import MOMENTUM, parsed

    momentum, given = None, False
    if args.momentum is not None:
        given = True
        if args.momentum.lower() not in ("none", "cumulative"):
            try:
                momentum = parsed(MOMENTUM, args.momentum, "--momentum (a number in [0, 1] or 'none')")
            except ValueError as e:
                raise UsageError(f"bnconform port: {e}") from None
    shape = _int_tuple(args.batch_shape, "--batch-shape") if args.batch_shape else None
    if (args.out or args.map) and not args.state:
        raise UsageError("bnconform port: --out and --map need --state (the trained state file to convert)")
    if args.state and not args.out:
        raise UsageError("bnconform port: --state needs --out (the file to write the converted state to)")
    try:
        result = port(args.source, args.target, momentum=momentum, eps=args.eps, momentum_given=given,
                      layout=args.layout, batch_shape=shape, steps=args.steps, dtype=args.dtype,
                      snippet=not args.state)
        if args.state:
            return _convert_state(args, result, shape)
    except (PortError, StateError) as e:
        raise UsageError(f"bnconform port: {e}") from None
    print(result.text())
    return 0


def _int_tuple(text: str, option: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise UsageError(f"bnconform port: {option} must be positive integers like 32,8,4,4, not {text!r}")
    return shape


def _convert_state(args, result, shape) -> int:
    """`port --state IN --out OUT`: every BatchNorm layer of IN converted to the target's names and written."""
    import numpy as np

    from .explain.state import History, StateError, convert_model, read_model, write_model

    mapping = {}
    for item in args.map or []:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise StateError(f"--map takes SOURCE_LAYER=TARGET_LAYER, not {item!r}")
        mapping[src] = dst
    layers = read_model(args.state, result.source)
    per_layer, n = {}, None
    for item in args.n or []:
        layer, sep, value = item.rpartition("=")
        try:
            value = int(value)
            if value < 1:
                raise ValueError
        except ValueError:
            raise StateError(f"--n takes N or LAYER=N (a positive integer), not {item!r}") from None
        if sep:
            per_layer[layer] = value
        else:
            n = value
    if n is None and shape is not None:
        n = int(np.prod(shape)) // shape[1]
    unknown = sorted(set(per_layer) - set(layers))
    if unknown:
        raise StateError(f"--n names layers the state does not have: {', '.join(unknown)}; it has {', '.join(layers)}")
    history = {name: History(n=per_layer.get(name, n), steps=args.steps, initial_var=args.initial_var,
                             n_varied=args.n_varied) for name in layers}
    converted = convert_model(layers, result.source, result.target, result.alpha, history, args.purpose, mapping)
    kind = write_model(args.out, converted, result.target)
    print(f"converted {len(converted.layers)} BatchNorm layer(s) of {args.state} ({result.source}) for "
          f"{result.target}: {args.out} ({kind})")
    for note in converted.notes:
        print(f"  {note}")
    from .explain.port import native_config

    rank = len(shape) if shape else 4
    for C in sorted({int(np.asarray(st["mean"]).shape[0]) for st in converted.layers.values()}):
        cfg = native_config(result.target, result.alpha, result.eps, C, rank, args.dtype, result.layout)
        print(f"  target hyperparameters for {C} channels: {', '.join(f'{k}={v!r}' for k, v in cfg.items())}")
    if not converted.exact:
        print("  the running-variance correction is APPROXIMATE (see above)")
    return 0


def _cmd_conventions(args) -> int:
    from .core.cases import CASES
    from .core.catalogue import select
    from .explain.infer import BY_CASE_KNOB, EVAL_GRADIENT_CASE, table
    from .core.install import hint as install_hint
    from .core.registry import Registry, RegistryError
    from .execution.worker import WORKER_THREADS, AdapterRun, Pool, WorkerConfig, cache_problem

    specs = select(args.frameworks)
    try:
        Registry.load(args.registry)  # refuse a bad registry here, not as every worker's setup error
    except RegistryError as e:
        raise UsageError(f"bnconform conventions: {e}") from None
    if why := cache_problem(None):  # likewise a cache directory the frameworks could not write
        raise UsageError(f"bnconform conventions: {why}")
    missing = [s for s in specs if not s.available()]
    if len(missing) == len(specs):
        raise UsageError(f"bnconform conventions: no adapter of selection {args.frameworks!r} is installed ("
                         + "; ".join(f"{s.name}: {', '.join(s.missing())} not installed" for s in specs[:3]) + ")")
    for s in missing:
        print(f"skip {s.name}: {', '.join(s.missing())} not installed ({install_hint(s.install)})",
              file=sys.stderr)
    cases = [c.id for c in CASES.values() if c.knob in BY_CASE_KNOB or c.knob == "eps"] + [EVAL_GRADIENT_CASE]
    records: list[dict] = []
    jobs = args.jobs or os.cpu_count() or 1
    cfg = WorkerConfig(registry_path=args.registry, threads=WORKER_THREADS)
    runs = [AdapterRun(s.name, cases, cfg, on_records=lambda cid, recs: records.extend(recs))
            for s in specs if s.available()]
    pool = Pool(runs, jobs)
    if pool.wait():
        print(f"bnconform: {pool.interruption}", file=sys.stderr)
        return pool.exit_status
    for line in pool.failures:
        print(f"bnconform: internal error driving {line}", file=sys.stderr)
    t = table(records)
    _print_table(t)
    for line in t["disagreements"]:
        print(f"finding: {line}")
    errors = _first_errors(records)
    for line in errors:
        print(f"bnconform conventions: {line}", file=sys.stderr)
    return 1 if errors or pool.failures else 0


def _first_errors(records: list[dict]) -> list[str]:
    """One line per adapter whose checks errored (setup failed, crashed, timed out): its row says nothing."""
    from .core.textsafe import terminal

    seen: dict[str, str] = {}
    for r in records:
        if r.get("verdict") == "error" and r["adapter"] not in seen:
            seen[r["adapter"]] = f"{r['adapter']}: error on {r['case']}: {terminal(r['reason'].splitlines()[0] if r['reason'] else '')}"
    return list(seen.values())


def _print_table(t: dict) -> None:
    try:
        from rich.table import Table
    except ImportError:  # plain text when rich is absent
        print(t["title"])
        for row in [t["columns"]] + t["rows"]:
            print(" | ".join(str(c) for c in row))
        return
    table = Table(title=t["title"], caption=t.get("description"), show_lines=False)
    for c in t["columns"]:
        table.add_column(c, overflow="fold")
    from .core.textsafe import markup

    for row in t["rows"]:
        table.add_row(*[markup(str(c)) for c in row])
    from .execution.progress import console

    console().print(table)


def _cmd_diff(args) -> int:
    from pathlib import Path

    from .outputs import diff as diffmod
    from .outputs import results
    from .outputs.diffview import print_terminal, render_html
    from .execution.progress import console as progress_console

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
    console = progress_console()
    print_terminal(d, console, page=args.html)
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
        console.print(f"gate: FAIL ({', '.join(reasons)}; {diffmod.REGRESSION_MEANS})", highlight=False,
                      markup=False)
        return 1
    console.print("gate: pass", highlight=False)
    return 0


def _cmd_explain(args) -> int:
    from .explain.explain import ExplainError, explain, read_array

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
    from .execution.export import ExportError, export

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

    from .execution import exchange
    from .execution.import_ import load, write_results
    from .core.registry import Registry, RegistryError

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


def _cmd_fuzz(args) -> int:
    from .execution.fuzz import FuzzError, FuzzOptions, run

    opts = FuzzOptions(frameworks=args.frameworks, budget=args.budget, seed=args.seed, jobs=args.jobs,
                       out=args.out, corpus=args.corpus, write_corpus=not args.no_corpus, registry=args.registry,
                       case_timeout=args.case_timeout, max_size=args.max_size, max_steps=args.max_steps,
                       paths=args.paths)
    try:
        return run(opts, print_=lambda line: print(line, flush=True))
    except FuzzError as e:
        raise UsageError(f"bnconform fuzz: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    from .core.validation import COUNT, EPS, FACTOR, FLOOR, JOBS, SECONDS, SEED, STEPS, VARIANCE

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
    r.add_argument("--jobs", type=JOBS, default=0,
                   help="adapter worker processes at a time (default 0: the CPU count)")
    r.add_argument("--case-timeout", type=SECONDS, default=300.0,
                   help="seconds one adapter may spend on one case (its checks become errors past it)")
    r.add_argument("--adapter-timeout", type=SECONDS, default=3600.0,
                   help="seconds one adapter may spend on all its cases, its set-up included")
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
    pt.add_argument("--eps", type=EPS, help="eps (default: the source's default)")
    pt.add_argument("--layout", choices=["channels_first", "channels_last"],
                    help="the target model's data layout (default: its framework's convention, stated in the output)")
    pt.add_argument("--batch-shape", help="one training batch as N,C[,spatial...] (default: the demo 32,8,4,4)")
    pt.add_argument("--steps", type=STEPS, help="training steps the state went through (default: 3 for the sizes; "
                                              "unknown for --purpose training, which is then approximate)")
    pt.add_argument("--dtype", default="float32", help="the model's dtype (default: float32)")
    pt.add_argument("--state", help="trained state to convert: .npz, torch .pt state_dict, Keras .weights.h5, "
                                    "flax .msgpack or an orbax checkpoint directory")
    pt.add_argument("--out", help="where to write the converted state (.npz or the target's own container)")
    pt.add_argument("--purpose", choices=["inference", "training"], default="inference",
                    help="inference: copy the statistics (the target infers as the source); training: the state "
                         "the target would hold after the same training (exact estimator correction)")
    pt.add_argument("--n", action="append", metavar="[LAYER=]N",
                    help="elements per channel in each training step of LAYER (N x H x W at that layer), or of every "
                         "layer; repeatable (default: from --batch-shape)")
    pt.add_argument("--initial-var", type=VARIANCE, default=1.0, help="initial running variance R0 (default 1)")
    pt.add_argument("--n-varied", action="store_true", help="n was not the same in every step: the correction "
                                                             "is approximate and says so")
    pt.add_argument("--map", action="append", metavar="SRC=DST", help="rename a layer (repeatable)")
    pt.set_defaults(func=_cmd_port)
    df = sub.add_parser("diff", help="compare two result sets (e.g. two framework versions): regressions, "
                                     "fixes, drift, convention changes; exit status is a CI gate")
    df.add_argument("old", help="results directory or records.jsonl of the OLD run")
    df.add_argument("new", help="results directory or records.jsonl of the NEW run")
    df.add_argument("--fail-on", action="append", metavar="CATEGORY[:ARG]",
                    help="also fail on: drift[:FACTORx], convention, registered, fix, new, missing, other (regressions always "
                         "fail); repeatable")
    df.add_argument("--drift-factor", type=FACTOR, default=10.0, help="ratio change reported as drift (default 10)")
    df.add_argument("--drift-floor", type=FLOOR, default=1e-3,
                    help="ratios below this count as this (noise in the last bits is not drift; default 1e-3)")
    df.add_argument("--html", help="write the diff as an HTML page here")
    df.add_argument("--title", help="title of the HTML page")
    df.set_defaults(func=_cmd_diff)
    cv = sub.add_parser("conventions", help="declared vs inferred conventions of the installed frameworks")
    cv.add_argument("--frameworks", default="all", help="adapters, families or globs (default: all core)")
    cv.add_argument("--jobs", type=JOBS, default=0,
                    help="worker processes at a time (default 0: the CPU count)")
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
    fz = sub.add_parser("fuzz", help="search for cases where adapters disagree with the oracle; shrink each "
                                     "failure to a minimal case and keep it in the regression corpus")
    fz.add_argument("--frameworks", default="all", help="adapters, families or globs (default: all core)")
    fz.add_argument("--budget", type=SECONDS, default=600.0, help="seconds in all (default: %(default)s)")
    fz.add_argument("--seed", type=SEED, help="master seed in [0, 2**32) (default: random, printed; the same "
                                              "seed and budget search the same cases)")
    fz.add_argument("--jobs", type=JOBS, default=0,
                    help="adapters fuzzed at a time (default 0: the CPU count)")
    fz.add_argument("--out", default="reports", help="results go to OUT/fuzz/<run-id>/ (default: %(default)s)")
    fz.add_argument("--corpus", help="where minimal cases are written (default: conformance/corpus/fuzz)")
    fz.add_argument("--no-corpus", action="store_true", help="do not write corpus files")
    fz.add_argument("--registry", help="registry directory or TOML file (default: the bundled registry)")
    fz.add_argument("--case-timeout", type=SECONDS, default=60.0,
                    help="seconds one case may take (default: 60)")
    fz.add_argument("--max-size", type=COUNT, default=1 << 20,
                    help="largest input, in elements (default: 2**20)")
    fz.add_argument("--max-steps", type=COUNT, default=2000, help="longest step sequence (default: 2000)")
    fz.add_argument("--paths", default="eager",
                    help="execution paths every drawn case runs on: eager (default), all, or names/globs "
                         "(compile*,export-onnx)")
    fz.set_defaults(func=_cmd_fuzz)
    _first_ten_minutes(p, sub)
    return p


class Terminated(BaseException):
    """SIGTERM (what CI runners and `timeout` send) outside a run's worker pool: finish like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated()


# -- what a new user meets first: --version, help on a bare `bnconform`, a description and examples per
# subcommand, and run's -k / --case
DESCRIPTIONS = {
    "run": ("Run the conformance suite: every selected adapter in its own worker process, each check compared "
            "with the float64 oracle against a derived bound. Writes OUT/runs/<run-id>/ (records.jsonl, "
            "meta.json) and the report OUT/index.html; exit 0 when every check passes or is a registered "
            "deviation, 1 when one fails or errors, 2 on bad input, 130 when interrupted (Ctrl-C), 143 on "
            "SIGTERM.",
            ["bnconform run                                  # default tier, every installed core framework",
             "bnconform run --tier smoke --frameworks torch  # seconds",
             "bnconform run --frameworks keras.jax -k 'f64 and not T2E'",
             "bnconform run --frameworks torch --case f32-4x3-ax1-T2E-a0.1-eps1e-05-rstats-s0",
             "bnconform run --save-baseline main   # later: --compare-baseline main"]),
    "report": ("Render results (directories, records.jsonl files, or trees of them) into one self-contained "
               "HTML file, merging them (e.g. the reports/results/<env>/ that tox envs wrote).",
               ["bnconform report reports/results --out reports/index.html"]),
    "diff": ("Compare two result sets (two framework versions, or a run and the same run with another "
             "registry): regressions, newly registered deviations, fixes, drift, convention changes. Exit 1 "
             "when the gate fails: always on regressions (checks that fail or error in NEW and did not in OLD).",
             ["bnconform diff reports/upgrade/upgrade-jax-old reports/upgrade/upgrade-jax-new --html diff.html",
              "bnconform diff OLD NEW --fail-on drift:10x --fail-on convention"]),
    "port": ("Map BatchNorm hyperparameters from one framework to another, say what no hyperparameter "
             "removes (with its size on a demo problem) and print a runnable snippet for the target.",
             ["bnconform port --from torch --to keras", "bnconform port --from keras --to torch --momentum 0.99"]),
    "conventions": ("Run the discriminating cases on every installed adapter and print the convention each "
                    "declares next to the one its outputs imply.",
                    ["bnconform conventions --frameworks torch,keras.*"]),
    "export": ("Write a tier's cases (inputs, expected configuration) and a runner for an outside runtime "
               "(TensorFlow.js under Node, MATLAB) into a folder; run it there, then `bnconform import` the folder.",
               ["bnconform export --runner node --tier smoke --out /tmp/tfjs",
                "bnconform import /tmp/tfjs --out reports"]),
    "import": ("Validate an exported folder's observations (after its runner ran) and turn them into results and "
               "the report, exactly as for an in-process adapter.",
               ["bnconform import /tmp/tfjs --out reports"]),
    "fuzz": ("Search for cases where adapters disagree with the oracle (hypothesis-drawn shapes, dtypes, "
             "hyperparameters, NaN/Inf/subnormal inputs, long step sequences), shrink each failure to a minimal case, "
             "and write it to the regression corpus the default tier replays. Exit 1 when something new was found.",
             ["bnconform fuzz --budget 600                     # every core adapter, a random seed (printed)",
              "bnconform fuzz --frameworks torch --budget 120 --seed 7 --no-corpus"]),
    "cases": ("List the case table of a tier: id, tier, what the case discriminates.",
              ["bnconform cases --tier smoke"]),
    "oracle": ("Print the oracle's answer (torch's convention) for cases.",
               ["bnconform oracle f32-4x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"]),
}
TIERS_HELP = ("tiers: smoke (2 cases, seconds per framework: is everything installed and sane?), default (the CI "
              "matrix, minutes: every convention knob with a discriminating case, every dtype, realistic sizes, "
              "the regression corpus), nightly (larger shapes, more seeds; not in CI)")


def _version_text() -> str:
    """bnconform's version and where it runs from, and the installed framework distributions (read from
    package metadata: nothing is imported)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from .core.install import ROOT, from_checkout

    try:
        own = version("bnconform")
    except PackageNotFoundError:
        own = "unknown"
    where = f"checkout {ROOT}" if from_checkout() else "installed package"
    lines = [f"bnconform {own} ({where}; Python {platform.python_version()})"]
    found = []
    for dist in ("numpy", "torch", "tensorflow", "tensorflow-cpu", "tf-keras", "keras", "jax", "jaxlib", "flax",
                 "equinox", "dm-haiku", "onnx", "onnxruntime", "paddlepaddle", "mlx", "tinygrad", "mindspore"):
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    lines.append("frameworks: " + (", ".join(found) if found else "none installed"))
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_text())
        parser.exit(0)


def _first_ten_minutes(p: argparse.ArgumentParser, sub) -> None:
    p.add_argument("--version", action=_VersionAction,
                   help="print bnconform's version and the installed frameworks' versions, then exit")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("start with:\n  bnconform run --tier smoke      # seconds: is everything installed and sane?\n"
                "  bnconform run                   # the default tier; the report: reports/index.html\n"
                "  bnconform COMMAND --help        # each command's options and examples\n" + TIERS_HELP)
    sub.required = False
    for name, parser in sub.choices.items():
        text, examples = DESCRIPTIONS.get(name, ("", []))
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        if text:
            parser.description = text
        if examples:
            parser.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    run = sub.choices["run"]
    run.epilog += "\n" + TIERS_HELP
    run.add_argument("-k", dest="keyword", metavar="EXPR",
                     help="only the cases whose id matches EXPR: words are substrings (globs with * ? [), "
                          "combined with and, or, not, e.g. -k 'f64 and not T2E'")
    run.add_argument("--case", action="append", metavar="ID",
                     help="exactly this case (any tier; repeatable); `bnconform cases` lists the ids")


def main(argv: list[str] | None = None) -> int:
    from .execution.worker import numpy_without_hugepage_advice

    numpy_without_hugepage_advice()  # before NumPy is imported: this module imports it only where used
    previous = None
    if threading_is_main():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:  # a bare `bnconform`: the help, not an error
            parser.print_help()
            return 0
        status = args.func(args)
        if status in (130, 143):  # stopped by a signal: exit as such even if another arrives while exiting
            _ignore_signals()
        return status
    except UsageError as e:
        print(_one_line(str(e)), file=sys.stderr)
        return 2
    except KeyError as e:
        print(_one_line(f"bnconform: {e.args[0]}"), file=sys.stderr)
        return 2
    except Exception as e:  # a broken regression-corpus file surfaces when the case table is first built
        from .core.regressions import CorpusError

        if not isinstance(e, CorpusError):
            raise
        print(_one_line(f"bnconform: invalid regression corpus: {e}"), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bnconform ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        _ignore_signals()
        print("bnconform: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        _ignore_signals()
        print("bnconform: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
            signal.signal(signal.SIGTERM, previous)


def _ignore_signals() -> None:
    """Once a command has been stopped by a signal, the process only exits: a further Ctrl-C or SIGTERM (a
    key held down, a CI runner's second signal) would otherwise end it by that signal (exit -2, the status
    lost; at interpreter shutdown Python's handlers are already back to the default)."""
    if threading_is_main():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _one_line(text: str) -> str:
    """A usage error as exactly one printable line (file contents and names can carry newlines and escapes)."""
    from .core.textsafe import cap, terminal

    return cap(terminal(" ".join(text.split("\n"))), 2000)
