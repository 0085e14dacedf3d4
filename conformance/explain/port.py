"""Port BatchNorm from one framework to another: the target's native hyperparameters that reproduce the source's
behaviour in the target's data layout, the residual differences, and the registered deviations of the target,
each sized by the oracle on the USER's problem (batch shape, training steps, dtype; a demo problem only when not
given). The port test (tests/conformance/test_port.py) checks the advice against the frameworks themselves.

What "no option removes it" means: a residual is a Convention knob on which source and target differ. For every
option of the target's API (the adapters of the same API class: flax.linen's use_fast_variance, equinox's mode,
tf_keras' fused, the Keras backends, ONNX opsets) the oracle runs the user's problem with the source's convention
changed in that knob to the option's value; an option whose run equals the source's removes the residual and is
named. Only when every option leaves a difference does the port say none removes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from reference import FORMATS, Convention, simulate

from ..core.cases import Case
from ..core.catalogue import load, resolve, siblings
from ..core.inputs import materialize

RESIDUAL_KNOBS = ("running_var", "averaging", "debias_hidden_init", "first_step", "train_normalizer",
                  "normalize_var", "variance")
PORT_SHAPE = (32, 8, 4, 4)  # the demo problem (N, C, H, W): n = 512 elements per channel
PORT_STEPS = 3
LAYOUTS = ("channels_first", "channels_last")
MAX_SIZED = 1 << 18  # elements per batch the oracle sizes directly; beyond, channels are capped (see _sizing_shape)
SIZED_QUANTITIES = ("y", "running_mean", "running_var")


class PortError(ValueError):
    """Bad input to `port` (a number out of range, an impossible shape): one line for the user."""


@dataclass(frozen=True)
class Residual:
    knob: str
    source: object
    target: object
    sentence: str
    effect: dict[str, float] = field(default_factory=dict)  # quantity -> relative difference it causes
    removed_by: tuple[str, ...] = ()  # options of the target's API that remove it (adapter names)
    checked: tuple[str, ...] = ()  # every option the oracle tried


@dataclass(frozen=True)
class Deviation:
    """A registered deviation of the target (or of one of its options) that applies to the user's problem."""

    adapter: str
    id: str
    reason: str
    link: str
    versions: str
    effect: dict[str, float]  # quantity -> relative size on the user's problem (empty: not modelled)


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
    layout: str = "channels_first"
    layout_note: str = ""
    deviations: list[Deviation] = field(default_factory=list)
    problem_note: str = ""
    case: Case | None = None

    def text(self) -> str:
        src, dst = load(self.source), load(self.target)
        lines = [f"Porting BatchNorm from {self.source} ({src.api}) to {self.target} ({dst.api})",
                 f"  source: {_kv(self.source_native)}  (weight on the new batch: {_alpha(self.alpha)}, eps "
                 f"{self.eps:g})", f"  layout: {self.layout_note}"]
        if self.unsupported:
            lines.append(f"  target cannot reproduce it: {self.unsupported}")
            return "\n".join(lines)
        lines.append(f"  target: {_kv(self.target_native)}")
        lines.append(f"Sizes below are for {self.problem_note}.")
        if self.residuals:
            lines.append("Residual differences:")
            for r in self.residuals:
                lines.append(f"  - {r.sentence}")
                if r.effect:
                    lines.append("    size: " + ", ".join(f"{q} {v:.3g} relative" for q, v in r.effect.items()))
                else:
                    lines.append("    size: none on this problem (below float64 rounding)")
                if r.removed_by:
                    lines.append(f"    removed by choosing: {', '.join(_option(n) for n in r.removed_by)}")
                else:
                    lines.append(f"    no option of the target removes it (the oracle checked: "
                                 f"{', '.join(_option(n) for n in r.checked)})")
        else:
            lines.append("No residual difference: with these hyperparameters the two compute the same thing.")
        if self.deviations:
            lines.append("Registered deviations of the target (conformance/registry), on this problem:")
            for d in self.deviations:
                size = (", ".join(f"{q} {v:.3g} relative" for q, v in d.effect.items()) if d.effect
                        else "not modelled by the oracle; see the report's error/bound ratios")
                lines.append(f"  - {_option(d.adapter)} [{d.id}] ({d.versions or 'all versions'}): {d.reason}")
                lines.append(f"    size: {size}")
                if d.link:
                    lines.append(f"    {d.link}")
        from adapters.state_io import format_for

        from ..core.catalogue import spec

        if format_for(spec(self.source).module) and format_for(spec(self.target).module):
            lines.append(f"Trained state: `bnconform port --from {self.source} --to {self.target} --state IN --out OUT` "
                         "converts every BatchNorm layer (names, order, dtype, counters; --purpose training also "
                         "corrects the running variance's estimator exactly, given --n and --steps).")
        else:
            lines.append("Trained state: bnconform has no state format for "
                         + " and ".join(n for n in (self.source, self.target) if not format_for(spec(n).module))
                         + " (it converts torch, Keras, flax and ONNX names).")
        if self.snippet:
            lines += ["Porting code (pasteable; replace the demo data and state with yours):", "", self.snippet]
        return "\n".join(lines)


def _kv(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items()) or "(framework defaults)"


def _alpha(a) -> str:
    return "cumulative average" if a is None else f"{a:g}"


def _option(name: str) -> str:
    from ..core.catalogue import spec

    s = spec(name)
    opts = ", ".join(f"{k}={v!r}" for k, v in s.kwargs.items())
    return f"{name} ({opts})" if opts else name


def check_number(name: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (lo excluded when lo_open), or PortError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PortError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise PortError(f"{name} must be a finite number in {rng}, not {value!r}")
    return v


def port_case(alpha: float | None, eps: float, shape: tuple[int, ...] = PORT_SHAPE, steps: int = PORT_STEPS,
              dtype: str = "float32", layout: str = "channels_first") -> Case:
    """The problem the port sizes: `steps` training steps, then inference. shape is logical (N, C, spatial...);
    channels_last puts C last."""
    if layout == "channels_last" and len(shape) > 2:
        shape, axis = (shape[0], *shape[2:], shape[1]), -1
    else:
        axis = 1
    return Case(tuple(shape), dtype, ("train",) * steps + ("eval",), axis=axis, momentum=alpha, eps=eps,
                init_stats="random", tier="nightly", note="port problem")


def _sizing_shape(shape: tuple[int, ...], steps: int) -> tuple[tuple[int, ...], str]:
    """Channels are independent and every size is per channel: a large problem is sized on fewer channels of
    the same n."""
    n = int(np.prod(shape)) // shape[1]
    C = shape[1]
    while C > 1 and n * C * (steps + 1) > MAX_SIZED:
        C = max(1, C // 2)
    if n * (steps + 1) > MAX_SIZED:
        raise PortError(f"batch shape {shape}: n = {n} elements per channel is too large for the oracle to size "
                        f"(at most {MAX_SIZED // (steps + 1)} with {steps} steps)")
    note = "" if C == shape[1] else f" (sized on {C} of its {shape[1]} channels; every size is per channel)"
    return (shape[0], C, *shape[2:]), note


def validate_problem(batch_shape, steps, dtype, layout) -> None:
    if not isinstance(batch_shape, tuple) or not 2 <= len(batch_shape) <= 5 or not all(
            isinstance(d, int) and d >= 1 for d in batch_shape):
        raise PortError(f"batch shape must be 2 to 5 positive integers N,C[,spatial...], not {batch_shape!r}")
    if int(np.prod(batch_shape)) // batch_shape[1] < 2:
        raise PortError(f"batch shape {batch_shape}: training needs at least 2 elements per channel")
    if not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise PortError(f"steps must be an integer in [1, 1000], not {steps!r}")
    if dtype not in FORMATS:
        raise PortError(f"unknown dtype {dtype!r}; known: {', '.join(FORMATS)}")
    if layout is not None and layout not in LAYOUTS:
        raise PortError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")


def port(source: str, target: str, momentum: float | None = None, eps: float | None = None,
         momentum_given: bool = False, *, layout: str | None = None, batch_shape: tuple[int, ...] | None = None,
         steps: int | None = None, dtype: str = "float32", snippet: bool = True) -> PortResult:
    """Map `source`'s native hyperparameters (its defaults where not given) to `target`'s.

    momentum is in the SOURCE's native form; momentum_given=True with momentum=None means the source's
    cumulative average (torch momentum=None). layout is the TARGET model's data layout (None: its framework's
    convention, stated in the result). batch_shape (N, C, spatial...), steps and dtype describe the user's
    training; None: the demo problem."""
    src_name, dst_name = resolve(source).name, resolve(target).name
    src, dst = load(src_name), load(dst_name)
    sc, dc = src.convention, dst.convention
    demo = batch_shape is None and steps is None
    batch_shape = tuple(batch_shape) if batch_shape is not None else PORT_SHAPE
    steps = PORT_STEPS if steps is None else steps
    validate_problem(batch_shape, steps, dtype, layout)
    if momentum is None and not momentum_given and sc.default_momentum is None:
        raise PortError(f"{src_name} has no default momentum: pass --momentum (in its native form, "
                        f"{sc.momentum_form.replace('_', ' ')})")
    if eps is None and sc.default_eps is None:
        raise PortError(f"{src_name} has no default eps: pass --eps")
    native = momentum if (momentum is not None or momentum_given) else sc.default_momentum
    if native is not None:
        native = check_number("momentum", native, 0.0, 1.0)
    eps = check_number("eps", sc.default_eps if eps is None else eps, 0.0, 1.0, lo_open=True)
    alpha = sc.native_to_canonical(native)

    assumed = layout is None
    layout = layout or dst.conventional_layout
    how = f"assumed: the convention of {dst.api}; pass --layout to change it" if assumed else "as given"
    layout_note = (f"{layout} ({how})"
                   + ("; the channel axis is " + ("-1 (last)" if layout == "channels_last" else "1")))
    shape, sized_note = _sizing_shape(batch_shape, steps)
    case = port_case(alpha, eps, shape, steps, dtype, layout)
    problem = materialize(case)
    src_native = native_config(src_name, alpha, eps, batch_shape[1], len(batch_shape), dtype, src.conventional_layout)
    dst_native = native_config(dst_name, alpha, eps, batch_shape[1], len(batch_shape), dtype, layout)
    unsupported = dst.unsupported(problem)
    if unsupported:
        dst_native = {}
    n = problem.reduced_count
    problem_note = ("the demo problem: " if demo else "your problem: ") + (
        f"batch {'x'.join(map(str, batch_shape))} (N, C, spatial), n = {n} elements per channel, {steps} training "
        f"step{'s' if steps != 1 else ''} then inference, {dtype}{sized_note}")
    residuals = residuals_between(problem, sc, dc, src_name, dst_name, options=[s.name for s in siblings(dst_name)])
    deviations = registered_deviations(problem, case, dst_name)
    text = ""
    if snippet and not unsupported:
        from .port_code import porting_code

        text = porting_code(src_name, dst_name, src_native, dst_native, alpha, eps, batch_shape, layout, dtype)
    return PortResult(src_name, dst_name, _public(src_native), _public(dst_native), alpha, eps, residuals, text,
                      problem, unsupported, layout, layout_note, deviations, problem_note, case)


def native_config(name: str, alpha, eps: float, channels: int, rank: int, dtype: str, layout: str) -> dict:
    """Adapter `name`'s native configuration for a layer of `channels` channels on rank-`rank` data in `layout`
    (the channel count of the user's layer, not of the problem the oracle sized on). {} where it cannot run."""
    adapter = load(name)
    p = materialize(port_case(alpha, eps, (2, channels, *(1,) * (rank - 2)), 1, dtype, layout))
    if adapter.unsupported(p):
        return {}
    cfg = adapter.native_config(p)
    if layout == "channels_last" and rank > 2 and cfg.get("axis") == rank - 1:
        cfg["axis"] = -1  # what users write for channels-last (and the frameworks' default)
    return cfg


def _public(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _relative(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def effect_of(problem, base_conv: Convention, changed: Convention, quantities=SIZED_QUANTITIES,
              compute_dtype: str | None = None) -> dict[str, float]:
    """Relative difference of each quantity between two conventions on `problem` (0 entries dropped)."""
    a = simulate(problem, base_conv, compute_dtype=compute_dtype, second_order=False)
    b = simulate(problem, changed, compute_dtype=compute_dtype, second_order=False)
    out = {}
    for q in quantities:
        if q in a.quantities and q in b.quantities and q not in a.not_applicable:
            d = _relative(b[q], a[q])
            if d > 0:
                out[q] = d
    return out


def _sentence(knob: str, sv, tv, src: str, dst: str, n: int) -> str:
    if knob == "running_var":
        return (f"running variance: {src} updates it with the {sv} batch variance, {dst} with the {tv} one; with "
                f"n = {n} elements per channel each update differs by alpha*var/(n-1) ({100 / (n - 1):.3g}% of "
                f"alpha*var), and at convergence by the factor n/(n-1) = {n / (n - 1):.5g}. Inference copies the "
                "statistics as they are; to continue training, convert the state with --purpose training")
    if knob == "averaging":
        return f"running statistics: {src} uses {sv}, {dst} uses {tv}"
    if knob == "train_normalizer":
        return (f"training output: {src} normalizes with the {sv} statistics, {dst} with the {tv} "
                "(EMA-blended) ones")
    if knob == "first_step":
        return f"first training step: {src} {'replaces' if sv == 'replace' else 'blends'} the running statistics, " \
               f"{dst} {'replaces' if tv == 'replace' else 'blends'} them"
    if knob == "variance":
        return (f"batch variance algorithm: {src} {sv}, {dst} {tv} (sized in the problem's dtype; it grows with "
                "|mean|/std: E[x^2]-E[x]^2 loses precision there)")
    return f"{knob.replace('_', ' ')}: {src} {sv}, {dst} {tv}"


def residuals_between(problem, sc: Convention, dc: Convention, src: str, dst: str,
                      options: list[str] | None = None) -> list[Residual]:
    """Convention differences between source and target that the port's hyperparameters do not remove, each
    with its effect on `problem` and the target options (adapters of the same API) that remove it, both
    computed by the oracle: an option removes a knob's difference when the source's convention with that knob
    set to the option's value computes exactly what the source's does."""
    conventions = {o: load(o).convention for o in (options or [])}
    out = []
    for knob, (sv, tv) in sc.differences(dc).items():
        if knob not in RESIDUAL_KNOBS:
            continue
        compute = problem.dtype if knob == "variance" else None  # float64 hides the algorithm: size it in dtype
        effect = effect_of(problem, sc, sc.with_(**{knob: tv}), compute_dtype=compute)
        removed = tuple(o for o, c in conventions.items()
                        if not effect_of(problem, sc, sc.with_(**{knob: getattr(c, knob)}), compute_dtype=compute))
        out.append(Residual(knob, sv, tv, _sentence(knob, sv, tv, src, dst, problem.reduced_count), effect,
                            removed, tuple(conventions)))
    return out


def registered_deviations(problem, case: Case, target: str, registry=None) -> list[Deviation]:
    """Registry entries of the target and its options that cover the user's problem, sized by their `model`
    (the Convention changes that reproduce the deviation) where the entry has one. Version ranges are checked
    against the installed framework; a framework that is not installed shows every range."""
    import fnmatch
    from importlib.metadata import PackageNotFoundError, version

    from ..core.registry import Registry

    registry = registry or Registry.load()
    out = []
    for option in (s.name for s in siblings(target)):
        adapter = load(option)
        try:
            installed = version(adapter.framework)
        except PackageNotFoundError:
            installed = None
        for e in registry.entries:
            if not fnmatch.fnmatchcase(option, e.adapter) or (installed and not e.applies_to(option, installed)):
                continue
            if not e.on_path("eager") or not any(fnmatch.fnmatchcase(case.id, g) for g in e.cases) or any(
                    fnmatch.fnmatchcase(case.id, g) for g in e.except_cases):
                continue  # the port advises on the layer as a user calls it: the eager path
            quantities = [q for q in SIZED_QUANTITIES if any(fnmatch.fnmatchcase(q, g) for g in e.quantities)]
            effect = {}
            if e.model and quantities:
                effect = effect_of(problem, adapter.convention, adapter.convention.with_(**e.model), quantities)
            reason = e.reason.split(". ")[0].rstrip(".")
            out.append(Deviation(option, e.id, reason, e.link, e.versions, effect))
    return out
