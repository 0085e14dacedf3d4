"""Failure messages in the spirit of torch.testing.assert_close: what differs, where, by how much, what was
allowed and why, and how to reproduce it."""
from __future__ import annotations


def _g(v) -> str:
    return f"{v:.6g}" if isinstance(v, (int, float)) else str(v)


def _full(v) -> str:
    """Every digit: values that differ in the 9th digit must not print alike."""
    return repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _error(m: dict):
    try:
        return abs(float(m["observed"]) - float(m["expected"]))
    except (TypeError, ValueError, KeyError):
        return "?"


def failure(rec: dict, case) -> str:
    m, tol = rec["metrics"] or {}, rec["tolerance"] or {}
    verdict = rec["verdict"]
    head = {
        "fail": "does not match the oracle",
        "xfail": "does not match the oracle (registered deviation)",
        "xpass": "now matches the oracle, but a deviation is registered for it",
        "characterized": "characterization (reported, not gating)",
    }.get(verdict, verdict)
    lines = [f"{rec['adapter']}: {rec['quantity']} {head}", f"  case {rec['case']}: {case.note}"]
    if m.get("problem"):
        lines.append(f"  {m['problem']} mismatch: {m['detail']}")
    else:
        total = max(m.get("total", 0), 1)
        lines += [
            f"  Mismatched elements: {m['mismatched']} / {m['total']} ({100.0 * m['mismatched'] / total:.1f}%)",
            f"  Observed/bound ratio: {_g(m['ratio'])} (a check passes at <= 1)",
            f"  Worst element (largest error/bound) at index {tuple(m['worst_index'] or ())}: observed "
            f"{_full(m['observed'])}, expected {_full(m['expected'])}, error {_full(_error(m))}, allowed "
            f"{_full(m['allowed'])}",
            f"  Greatest absolute difference: {_full(m['max_abs'])}",
            f"  Greatest relative difference: {_g(m['max_rel'])}",
            f"  Greatest difference in ulp ({rec['dtype']}): {_g(m['max_ulp'])}",
        ]
    cs = rec.get("channel_stats")
    if cs:
        lines.append(f"  Channel {cs['channel']} at step {cs['step']}: batch mean {_g(cs['mean'])}, biased var "
                     f"{_g(cs['var'])}, n = {cs['n']}; normalized with mean {_g(cs['normalized_with_mean'])}, "
                     f"var {_g(cs['normalized_with_var'])} ({cs['source']} statistics)")
    if tol:
        saved = f", u_saved = {tol['u_saved']}" if tol.get("u_saved") else ""
        lines.append(f"  Tolerance: {tol['formula']}")
        lines.append(f"    n = {tol['n']}, kappa = {tol['kappa']}, u_compute = {tol['u_compute']}, u_io = "
                     f"{tol['u_io']}, u_stats = {tol['u_stats']}{saved}, variance model {tol['variance']}, "
                     f"safety factor {tol['safety']}")
    if rec.get("characterization"):
        lines.append(f"  Characterization: {rec['characterization']}")
    if rec.get("registry"):
        reg = rec["registry"]
        lines.append(f"  Registered deviation {reg['id']}: {reg['reason']}" + (f" ({reg['link']})" if reg["link"]
                                                                              else ""))
    d = rec.get("diagnosis")
    if d:
        lines.append(f"  Diagnosis: {d.get('summary', d)}")
    if rec.get("repro"):  # flush-left, so that it pastes; it prints the verdict, error, bound and ratio
        lines.append("  Reproduce (paste into Python started in the repository root):")
        lines += rec["repro"].splitlines()
    if rec.get("nodeid"):
        lines.append(f"  pytest node: {rec['nodeid']}")
    return "\n".join(lines)
