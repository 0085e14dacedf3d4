"""The porting code `bnconform port` prints: a pasteable script that needs no bnconform. It builds the source and
the target BatchNorm with the ported hyperparameters, loads one trained state into both (in each framework's own
names: adapters/port_snippets.py), runs a batch through both in inference and prints the largest difference
against the float32 rounding bound of the two (bnconform's error model for an inference output,
conformance/core/tolerance.py, written out so the script stays self-contained).
"""
from __future__ import annotations

from adapters import port_snippets
from reference import unit_roundoff

from ..core.catalogue import spec
from ..core.tolerance import SAFETY

NUMPY_DTYPES = ("float64", "float32", "float16")


def porting_code(source: str, target: str, src_cfg: dict, dst_cfg: dict, alpha, eps: float,
                 batch_shape: tuple[int, ...], layout: str, dtype: str) -> str:
    """The script, or a sentence saying why there is none."""
    ss, ts = spec(source), spec(target)
    src_block = port_snippets.layer_block(ss.module, "source_bn", port_snippets.inference_config(ss.module, src_cfg),
                                          _layout_of(source), ss.kwargs)
    dst_block = port_snippets.layer_block(ts.module, "target_bn", port_snippets.inference_config(ts.module, dst_cfg),
                                          layout, ts.kwargs)
    missing = [n for n, b in ((source, src_block), (target, dst_block)) if b is None]
    if missing:
        return f"(no porting code for {' and '.join(missing)} yet: use the hyperparameters above)"
    np_dtype = dtype if dtype in NUMPY_DTYPES else "float32"
    u_io, u_c = unit_roundoff(np_dtype), unit_roundoff("float32" if np_dtype == "float16" else np_dtype)
    C = batch_shape[1]
    lines = [
        f"# Porting code from `bnconform port --from {source} --to {target}`: needs no bnconform. Replace the demo",
        "# batch and state with yours (the state in roles gamma, beta, mean, var: the file `--state IN --out OUT`",
        "# writes holds them in the target's own names).",
        "import numpy as np",
        "",
        f"x = np.random.default_rng(0).standard_normal({tuple(batch_shape)!r}).astype(np.{np_dtype})"
        "  # your batch, (N, C, ...) order",
        f"rng, C = np.random.default_rng(1), {C}  # your trained layer's state (demo values)",
        'state = {"gamma": rng.uniform(0.5, 1.5, C), "beta": rng.uniform(-0.5, 0.5, C),',
        '         "mean": rng.uniform(-0.5, 0.5, C), "var": rng.uniform(0.5, 1.5, C)}',
        f"state = {{k: v.astype(np.{np_dtype}) for k, v in state.items()}}",
        "",
        src_block,
        "",
        dst_block,
        "",
        "",
        "def rounding_bound(x, st, eps):",
        "    # first-order rounding error of y = gamma (x - mean) / sqrt(var + eps) + beta in each framework",
        f"    # (bnconform's error model, safety factor {SAFETY:g}), per element, with channels on axis 1",
        "    c = lambda v: np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))",
        "    g, b, m = np.abs(c(st['gamma'])), np.abs(c(st['beta'])), c(st['mean'])",
        "    r = 1 / np.sqrt(c(st['var']) + eps)",
        "    y = g * (x - m) * r + b",
        f"    return {SAFETY!r} * (4 * {u_c!r} * (g * r * (np.abs(x) + np.abs(m)) + b) + {u_io!r} * np.abs(y))",
        "",
        "",
        "y_source, y_target = source_bn(x, state), target_bn(x, state)",
        f"bound = 2 * rounding_bound(x.astype(np.float64), state, {eps!r})  # source's rounding + target's",
        "worst = np.abs(y_target - y_source)",
        'print(f"largest difference {worst.max():.3g}, {(worst / bound).max():.3g} of the bound "',
        '      f"({\'within\' if np.all(worst <= bound) else \'OUTSIDE\'} float rounding)")',
    ]
    return "\n".join(lines)


def _layout_of(name: str) -> str:
    from ..core.catalogue import load

    return load(name).conventional_layout
