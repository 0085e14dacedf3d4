"""The `bnconform` command line. Every usage error is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
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
