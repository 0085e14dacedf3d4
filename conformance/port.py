"""Port BatchNorm hyperparameters from one framework to another: the target's native hyperparameters that
reproduce the source's behaviour, and the residual differences no hyperparameter can remove, with their size
computed by the oracle (which the port test checks against the frameworks themselves).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from adapters import BY_NAME
from reference import Convention, simulate

from .cases import Case
from .catalogue import load, spec
from .inputs import materialize

# Framework names a user types -> the adapter that stands for them.
ALIASES = {
    "torch": "torch.nn.BatchNorm", "pytorch": "torch.nn.BatchNorm",
    "torch.functional": "torch.nn.functional.batch_norm",
    "keras": "keras.tensorflow", "keras-tf": "keras.tensorflow", "keras-jax": "keras.jax",
    "keras-torch": "keras.torch", "tf_keras": "tf_keras.fused", "keras2": "tf_keras.fused",
    "tf": "tf.nn.batch_normalization", "tensorflow": "tf.nn.batch_normalization",
    "tf.fused": "tf.raw_ops.FusedBatchNormV3",
    "flax": "flax.linen", "linen": "flax.linen", "nnx": "flax.nnx", "equinox": "equinox.batch",
    "haiku": "haiku", "onnx": "onnxruntime", "onnxruntime": "onnxruntime",
}
RESIDUAL_KNOBS = ("running_var", "averaging", "debias_hidden_init", "first_step", "train_normalizer",
                  "normalize_var", "variance")
PORT_SHAPE = (32, 8, 4, 4)  # the demo problem: n = 512 elements per channel


@dataclass
class Residual:
    knob: str
    source: object
    target: object
    sentence: str
    effect: dict[str, float] = field(default_factory=dict)  # quantity -> relative difference it causes


@dataclass
class PortResult:
    source: str
    target: str
    source_native: dict
    target_native: dict
    alpha: float | None
    eps: float
    residuals: list[Residual]
    snippet: str
    problem: object = None
    unsupported: str | None = None

    def text(self) -> str:
        src, dst = load(self.source), load(self.target)
        lines = [f"Porting BatchNorm from {self.source} ({src.api}) to {self.target} ({dst.api})",
                 f"  source: {_kv(self.source_native)}  (weight on the new batch: {_alpha(self.alpha)}, eps "
                 f"{self.eps:g})"]
        if self.unsupported:
            lines.append(f"  target cannot reproduce it: {self.unsupported}")
        else:
            lines.append(f"  target: {_kv(self.target_native)}")
        if self.unsupported:
            return "\n".join(lines)
        if self.residuals:
            lines.append("Residual differences no hyperparameter removes:")
            for r in self.residuals:
                lines.append(f"  - {r.sentence}")
                if r.effect:
                    lines.append("    on the demo problem (n = 512 per channel, 3 training steps, then inference): " +
                                 ", ".join(f"{q} {v:.3g} relative" for q, v in r.effect.items()))
        else:
            lines.append("No residual difference: with these hyperparameters the two compute the same thing.")
        if self.snippet:
            lines += ["Runnable snippet (target framework, bnconform's demo inputs):", "",
                      *("    " + ln for ln in self.snippet.splitlines())]
        return "\n".join(lines)


def _kv(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items()) or "(framework defaults)"


def _alpha(a) -> str:
    return "cumulative average" if a is None else f"{a:g}"


def resolve(name: str) -> str:
    if name in ALIASES:
        return ALIASES[name]
    try:
        return spec(name).name
    except KeyError:
        pass
    raise KeyError(f"unknown framework {name!r}; use an adapter name ({', '.join(BY_NAME)}) or one of "
                   f"{', '.join(sorted(ALIASES))}")


def port_case(alpha: float | None, eps: float) -> Case:
    return Case(PORT_SHAPE, "float32", ("train",) * 3 + ("eval",), momentum=alpha, eps=eps, init_stats="random",
                tier="nightly", note="port demo")


def _sentence(knob: str, sv, tv, src: str, dst: str, n: int) -> str:
    if knob == "running_var":
        return (f"running variance: {src} updates it with the {sv} batch variance, {dst} with the {tv} one; with "
                f"n = {n} elements per channel each update differs by alpha*var/(n-1) ({100 / (n - 1):.3g}% of "
                f"alpha*var), and at convergence by the factor n/(n-1) = {n / (n - 1):.5g}")
    if knob == "averaging":
        return f"running statistics: {src} uses {sv}, {dst} uses {tv}"
    if knob == "train_normalizer":
        return (f"training output: {src} normalizes with the {sv} statistics, {dst} with the {tv} "
                "(EMA-blended) ones")
    if knob == "first_step":
        return f"first training step: {src} {'replaces' if sv == 'replace' else 'blends'} the running statistics, " \
               f"{dst} {'replaces' if tv == 'replace' else 'blends'} them"
    if knob == "variance":
        return (f"batch variance algorithm: {src} {sv}, {dst} {tv} (differs only when |mean| >> std: E[x^2]-E[x]^2 "
                "loses precision there)")
    return f"{knob.replace('_', ' ')}: {src} {sv}, {dst} {tv}"


def port(source: str, target: str, momentum: float | None = None, eps: float | None = None,
         momentum_given: bool = False) -> PortResult:
    """Map `source`'s native hyperparameters (its defaults where not given) to `target`'s.

    momentum is in the SOURCE's native form; momentum_given=True with momentum=None means the source's
    cumulative average (torch momentum=None)."""
    src_name, dst_name = resolve(source), resolve(target)
    src, dst = load(src_name), load(dst_name)
    sc, dc = src.convention, dst.convention
    if momentum is None and not momentum_given and sc.default_momentum is None:
        raise KeyError(f"{src_name} has no default momentum: pass --momentum (in its native form, "
                       f"{sc.momentum_form.replace('_', ' ')})")
    if eps is None and sc.default_eps is None:
        raise KeyError(f"{src_name} has no default eps: pass --eps")
    native = momentum if (momentum is not None or momentum_given) else sc.default_momentum
    eps = sc.default_eps if eps is None else eps
    alpha = sc.native_to_canonical(native)
    case = port_case(alpha, eps)
    problem = materialize(case)
    src_native = src.native_config(problem)
    unsupported = dst.unsupported(problem)
    dst_native = {} if unsupported else dst.native_config(problem)
    residuals = residuals_between(problem, sc, dc, src_name, dst_name)
    snippet = "" if unsupported else _snippet(dst, case, problem)
    return PortResult(src_name, dst_name, _public(src_native), _public(dst_native), alpha, eps, residuals, snippet,
                      problem, unsupported)


def _public(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def residuals_between(problem, sc: Convention, dc: Convention, src: str, dst: str) -> list[Residual]:
    """Convention differences that hyperparameters cannot remove, each with its effect (relative difference
    of y, running mean, running variance when only that knob changes), computed by the oracle."""
    base = simulate(problem, sc, second_order=False)
    out = []
    for knob, (sv, tv) in sc.differences(dc).items():
        if knob not in RESIDUAL_KNOBS:
            continue
        t = simulate(problem, sc.with_(**{knob: tv}), second_order=False)
        effect = {}
        for q in ("y", "running_mean", "running_var"):
            a, b = np.asarray(t[q]), np.asarray(base[q])
            d = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))
            if d > 1e-7:
                effect[q] = d
        out.append(Residual(knob, sv, tv, _sentence(knob, sv, tv, src, dst, problem.reduced_count), effect))
    return out


def _snippet(adapter, case, problem) -> str:
    native = adapter.snippet(problem)
    if not native:
        return ""
    return "\n".join([
        "import numpy as np",
        "from conformance.cases import Case",
        "from conformance.inputs import materialize",
        f"p = materialize(Case({case.shape!r}, 'float32', {case.modes!r}, momentum={case.momentum!r}, "
        f"eps={case.eps!r}, init_stats='random', tier='nightly', note='port demo'))",
        native,
        "print({k: v.shape for k, v in observed.items()})",
    ])
