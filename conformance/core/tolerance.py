"""Error bounds, derived from the arithmetic, not tuned: how far a correct implementation may be from the oracle.

A check passes when every element's |observed - exact| <= SAFETY * B, elementwise. B is a first-order
rounding-error bound valid for *any* summation order (recursive summation's worst case, Higham ch. 4), so a
framework cannot fail by summing in another order, and a violation means the result is not what the declared
convention computes in the declared precision. Notation per channel: n elements reduced, u_c the unit
roundoff of the compute format, u_o of the output, u_s of stored statistics, u_p of parameters; mu, v the
exact batch mean and biased variance; (m, s2) the centre and variance a step normalizes with; r =
1/sqrt(s2 + eps); xhat = (x - m) r.

Batch statistics (computed):
  d_mu = (n + 1) u_c mean|x| + (n + 1) eta_c                    sum of n terms, one division
  d_v  = (n + 3) u_c v + d_mu^2 + (n + 3) eta_c                 two-pass (Chan, Golub & LeVeque 1983)
  d_v  = (n + 4) (u_c (v + mu^2) + eta_c)                       E[x^2] - E[x]^2 ("fast"): kappa^2 times worse
  (eta: the absolute error of a rounding near zero, see Underflow below; + 4 eta_c + eta_s per running update)
Running statistics, R_t = (1 - w) R_{t-1} + w B_t (w the step's weight on the new statistic):
  d_R_t = |1 - w| d_R_{t-1} + |w| d_B_t + 4 u_c (|1 - w| |R_{t-1}| + |w| |B_t|) + u_s |R_t|
  d_R_0 = u_s |R_0| when statistics are stored in a format narrower than the case's (else 0: R_0 is exact)
Statistics held in a narrower format u_h between reduction and normalization (torch's CPU kernel keeps the
saved mean and inverse std in the parameter dtype): d_m += u_h |m| + eta_h, d_s2 += 2 (u_h + eta_h / r) (s2 + eps)
(eta_h: that format's rounding near zero, below; a float16 mean of subnormal inputs is rounded to float16's
subnormal grid, an error of up to 3e-8 that r and sum|dy| then magnify in y, dx and dgamma).
Output, with (d_m, d_s2) the error of whatever the step normalized with (batch, or running statistics):
  d_y = |gamma| r (d_m + |x - m| d_s2 / (2 (s2 + eps))) + 4 u_c (|gamma| r (|x| + |m|) + |beta|) + u_o |y|
  The 4 u_c term covers both usual evaluation orders: gamma (x - m) r + beta and x inv + (beta - m inv),
  inv = gamma r (the second cancels when |m| >> sigma, hence |x| + |m|), and rsqrt accurate to 2 ulp.
Gradients (last step; a, c say whether the backward goes through the mean and the variance):
  dx = gamma r (dy - a M1 - c xhat_mu M2),  M1 = mean dy, M2 = mean(dy xhat), xhat_mu = (x - mu) r
  d_xhat = r (d_m + |x - m| d_s2 / (2 (s2 + eps))) + 2 u_c |xhat|
  d_dx = |gamma| r [a (n+1) u_c mean|dy| + c (d_xhat |M2| + |xhat_mu| ((n+2) u_c mean|dy xhat| + mean(|dy| d_xhat)))]
         + (4 u_c + 2 d_s2 / (s2 + eps)) T + u_o |dx|,   T = |gamma| r (|dy| + a |M1| + c |xhat_mu| |M2|)
  d_dgamma = (n + 2) u_c sum|dy xhat| + sum(|dy| d_xhat) + u_p |dgamma|;  d_dbeta = (n + 1) u_c sum|dy| + u_p |dbeta|
Second order (magnitude model: every term of d<dx, v>/dx is a product of these factors):
  d_d2x = ((2n + 10) u_c + rho) |gamma| r^2 (1 + |xhat|)^2 (|v| + V)(|dy| + D) + u_o |d2x|,
     V = mean|v| (1 + max|xhat|), D = mean|dy| (1 + max|xhat|), rho = 3 d_s2/(s2 + eps) + 3 r d_m
  d_d2gamma = ((n + 6) u_c + rho + u_m) r sum(|v| (|dy| + a |M1| + c |xhat_mu| |M2|)) + u_p |d2gamma|,
     u_m = u_o when the io format is narrower than the compute format (mixed precision: the products r dy v
     are rounded to io before the float32 reduction; with io = compute they are covered by the n u_c term), else 0
  In inference (a = c = 0) dx does not depend on x, so d2x is exactly 0 and so is its bound.

SAFETY = 2 covers what first-order analysis drops: the O(u^2) remainder (a factor 1/(1 - n u) <= 1.12 while
the model is valid, n u_c <= 0.1) and library square roots / reciprocal square roots accurate to a few ulp
rather than correctly rounded. It is stated here once and is never changed per case or per framework: a
framework outside SAFETY * B is a finding, registered with its reason.

Underflow (gradual, IEEE subnormals): the model above is relative, and a result in the subnormal range is
rounded with an absolute error instead, fl(z) = z (1 + delta) + eta, |eta| <= u lambda (lambda the format's
smallest normal number; Higham, Accuracy and Stability of Numerical Algorithms, sec. 2.1). Every bound adds,
for the format the quantity is returned in, u_f lambda_f, and for the arithmetic before it (n + 10) u_c lambda_c:
negligible unless the values themselves are near the subnormal range (denormal inputs, a variance that
underflows), where the relative terms alone would demand more digits than the format has. The same term is
carried through the statistics (each rounding of the mean, the variance and the running statistics adds one)
into what uses them: y's r d_m. A framework that flushes subnormals (Precision.subnormals = "flush", declared by
the adapter: TensorFlow's and XLA's CPU threads set FTZ/DAZ) errs by up to lambda, not u lambda, per rounding.

Ill-posed comparisons (characterization): when the bound on the variance's relative error exceeds 0.1 the
first-order model itself is invalid (large |mean|/std with a fast variance, float16 accumulation over large
n, ...). Such checks are reported and diffed, never failing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reference import FORMATS, Convention, Problem, Trace, blocked, to_channels, unit_roundoff
from reference.statistics import reduce_axes

SAFETY = 2.0
ILL_POSED = 0.1
BLOCK = blocked.BLOCK_ELEMENTS  # elements per block of the elementwise bounds (see `_elementwise`)


def _elementwise(out: np.ndarray, fn, *operands) -> np.ndarray:
    """out[...] = fn(*operands), evaluated one cache-sized block at a time (reference/blocked.py): operands are
    x-shaped arrays or per-channel ones kept with keepdims. Every element goes through the same operations in the
    same order as the whole-array expression, so the same bits, without an x-sized temporary per operation."""
    if out.size <= BLOCK:  # one block: the whole array (a many-step case makes thousands of small calls)
        out[...] = fn(*operands)
        return out
    for b in blocked.blocks(out.shape, BLOCK):
        out[b] = fn(*(blocked.part(a, b) for a in operands))
    return out


@dataclass(frozen=True)
class Bound:
    values: np.ndarray  # elementwise, already multiplied by SAFETY
    formula: str
    params: dict = field(default_factory=dict)
    ill_posed: str | None = None  # why this comparison is characterization, if it is


def _u_exp(u: float) -> str:
    return f"2^{int(round(np.log2(u)))}"


def bounds(problem: Problem, trace: Trace, convention: Convention, precision) -> dict[str, Bound]:
    """Bounds for every quantity the trace holds."""
    u_c, u_o = unit_roundoff(precision.compute), unit_roundoff(precision.io)
    u_s, u_p = unit_roundoff(precision.stats), unit_roundoff(precision.params)
    saved = getattr(precision, "saved", None)
    u_h = unit_roundoff(saved) if saved and unit_roundoff(saved) > u_c else 0.0
    n, axis, nd = problem.reduced_count, problem.axis, len(problem.shape)
    axes = reduce_axes(nd, axis)
    eps = trace.eps
    fast = convention.variance in ("fast", "fast_clamped")
    run_fac = n / (n - 1) if (convention.running_var == "unbiased" and n > 1) else 1.0
    norm_fac = n / (n - 1) if (convention.normalize_var == "unbiased" and n > 1) else 1.0
    gamma = np.abs(to_channels(problem.gamma_or_ones(), nd, axis))
    beta = np.abs(to_channels(problem.beta_or_zeros(), nd, axis))

    def ch(vec):
        return to_channels(vec, nd, axis)

    flush = getattr(precision, "subnormals", "gradual") == "flush"

    def tiny(fmt: str) -> float:
        """The absolute rounding error of a result near zero: u lambda with gradual underflow; lambda itself
        where the framework flushes subnormal results (and reads subnormal inputs) as zero. The flush is the
        CPU's float32/float64 arithmetic flag: float16's subnormals lie far above float32's smallest normal
        number and are produced by conversion, which the flag leaves alone (bfloat16 shares float32's range)."""
        smallest_normal = 2.0 ** FORMATS[fmt].min_exponent
        flushed = flush and FORMATS[fmt].min_exponent <= FORMATS["float32"].min_exponent
        return smallest_normal if flushed else unit_roundoff(fmt) * smallest_normal

    def underflow(name: str) -> float:
        """Absolute rounding error of results in the subnormal range: the returned format's and the arithmetic's."""
        returned = {"running_mean": precision.stats, "running_var": precision.stats,
                    "dgamma": precision.params, "dbeta": precision.params, "d2gamma": precision.params}.get(name)
        if name in ("batch_mean", "batch_var"):
            returned = precision.io if u_o >= u_s else precision.stats
        returned = returned or precision.io
        return tiny(returned) + (n + 10) * tiny(precision.compute)

    eta_y = underflow("y")
    # the same absolute term for every rounding inside the statistics, carried into what uses them (y through
    # r (d_m + ...): a mean of subnormal inputs is rounded to the subnormal grid, an error r = 1/sqrt(s2 + eps)
    # magnifies; Higham sec. 2.1)
    eta_c, eta_s = tiny(precision.compute), tiny(precision.stats)
    # y's bound, SAFETY * (B + eta) as `put` makes it, written step by step into one array
    y_bound = np.empty((problem.steps, *problem.shape))
    # The initial statistics are exact in the case dtype; stored in a narrower format they are rounded first.
    d_rm = (u_s if u_s > u_o else 0.0) * np.abs(problem.running_mean)
    d_rv = (u_s if u_s > u_o else 0.0) * np.abs(problem.running_var)
    rm_prev, rv_prev = problem.running_mean.copy(), problem.running_var.copy()
    rms, rvs, bms, bvs, rho_var, kappa = [], [], [], [], [], []
    last = {}
    for t, (x, mode) in enumerate(zip(problem.xs, convention.modes(problem))):
        mu, v = trace.step_mean[t], trace.step_var[t]
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa.append(float(np.max(np.sqrt(1.0 + np.where(v > 0, mu * mu / v, 0.0)))))
        d_mu = (n + 1) * u_c * np.mean(np.abs(x), axis=axes) + (n + 1) * eta_c
        d_v = ((n + 4) * u_c * (v + mu * mu) + (n + 4) * eta_c if fast
               else (n + 3) * u_c * v + d_mu * d_mu + (n + 3) * eta_c)
        rho_var.append(float(np.max(d_v / np.maximum(v + eps, np.finfo(float).tiny))))
        d_rm_before, d_rv_before = d_rm.copy(), d_rv.copy()
        if mode == "train":
            bms.append(d_mu + max(u_o, u_s) * np.abs(mu))
            bfac = n / (n - 1) if (convention.batch_var_estimator == "unbiased" and n > 1) else 1.0
            bvs.append(bfac * d_v + max(u_o, u_s) * bfac * np.abs(v))
        # (an inference step updates the statistics only under a diagnosis hypothesis: forgot eval())
        if problem.track_running_stats and (mode == "train" or trace.weights[t] != 0.0):
            # |w| and |1 - w|: an error bound adds magnitudes. A weight outside [0, 1] (a debiased or hypothesized
            # update) would otherwise make the bound negative, and a negative bound passes anything.
            w = trace.weights[t]
            on_old, on_new = abs(1 - w), abs(w)
            rm_new, rv_new = trace["running_mean"][t], trace["running_var"][t]
            d_rm = (on_old * d_rm + on_new * d_mu + 4 * u_c * (on_old * np.abs(rm_prev) + on_new * np.abs(mu))
                    + u_s * np.abs(rm_new) + 4 * eta_c + eta_s)
            d_rv = (on_old * d_rv + on_new * run_fac * d_v
                    + 4 * u_c * (on_old * np.abs(rv_prev) + on_new * run_fac * np.abs(v)) + u_s * np.abs(rv_new)
                    + 4 * eta_c + eta_s)
        rm_prev, rv_prev = trace["running_mean"][t], trace["running_var"][t]
        rms.append(d_rm.copy())
        rvs.append(d_rv.copy())
        source = trace.sources[t]
        if source == "running":
            d_m, d_s2 = d_rm_before, d_rv_before
        elif source == "updated":
            d_m, d_s2 = d_rm, d_rv
        else:
            d_m, d_s2 = d_mu, norm_fac * d_v
        m, s2 = ch(trace.norm_mean[t]), ch(trace.norm_var[t])
        if u_h:
            eta_h, held = tiny(saved), trace.norm_var[t] + eps  # held: 1 / r^2, r the inverse std it holds
            d_m = d_m + u_h * np.abs(trace.norm_mean[t]) + eta_h
            d_s2 = d_s2 + 2 * (u_h + eta_h * np.sqrt(held)) * held
        r = 1.0 / np.sqrt(s2 + eps)
        rel_s2 = ch(d_s2) / (s2 + eps)
        _elementwise(y_bound[t], lambda x, y, gamma, r, d_m, m, rel_s2, beta: SAFETY * (
            (gamma * r * (d_m + 0.5 * np.abs(x - m) * rel_s2)
             + 4 * u_c * (gamma * r * (np.abs(x) + np.abs(m)) + beta) + u_o * np.abs(y)) + eta_y),
            x, trace["y"][t], gamma, r, ch(d_m), m, rel_s2, beta)
        last = dict(x=x, m=m, s2=s2, r=r, d_m=ch(d_m), d_s2=ch(d_s2), rel_s2=rel_s2, mu=ch(mu))

    out: dict[str, Bound] = {}
    stats_model = "E[x^2]-E[x]^2 (fast)" if fast else "two-pass"
    common = dict(n=n, kappa=round(max(kappa), 4), u_compute=_u_exp(u_c), u_io=_u_exp(u_o),
                  u_stats=_u_exp(u_s), u_params=_u_exp(u_p), u_saved=_u_exp(u_h) if u_h else None,
                  safety=SAFETY, variance=stats_model)
    worst_rho = max(rho_var)
    ill = None
    if worst_rho > ILL_POSED:
        ill = (f"ill-posed: the variance's relative error bound reaches {worst_rho:.2g} > {ILL_POSED} "
               f"({stats_model}, n = {n}, kappa = {max(kappa):.3g}, u = {_u_exp(u_c)}): "
               "the first-order error model does not hold")

    def put(name, arr, formula, exact=False, final=False):
        """The bound of `name`: SAFETY * (arr + eta), or arr itself when it is that already (`final`)."""
        eta = 0.0 if exact else underflow(name)
        values = arr if final else SAFETY * (np.asarray(arr, dtype=np.float64) + eta)
        out[name] = Bound(values, formula + (" + eta" if eta else ""), dict(common), ill)

    put("y", y_bound, "|gamma| r (d_m + |x-m| d_s2 / 2(s2+eps)) + 4 u_c (|gamma| r (|x|+|m|) + |beta|) + u_o |y|",
        final=True)
    put("running_mean", np.stack(rms),
        "EMA recursion: |1-w| d_R + |w| d_mu + 4 u_c (|1-w| |R| + |w| |mu|) + u_s |R| + 4 eta_c + eta_s")
    put("running_var", np.stack(rvs),
        "EMA recursion: |1-w| d_R + |w| f d_v + 4 u_c (|1-w| |R| + |w| f v) + u_s |R| + 4 eta_c + eta_s")
    put("num_batches_tracked", np.zeros(problem.steps), "exact (an integer counter)", exact=True)
    if bms:
        put("batch_mean", np.stack(bms), "d_mu = (n+1) (u_c mean|x| + eta_c) + u |mu|")
        put("batch_var", np.stack(bvs), f"d_v ({stats_model}) + u |v|")

    # -- gradients of the last step. Reductions are NumPy's over the whole x-shaped term, as written in the
    # docstring (their bits depend on NumPy's summation order); each term is formed once, block by block, into
    # one buffer, and a mean is its sum / n, as np.mean divides np.sum's result. The elementwise bound of dx is
    # then one blocked pass.
    x, m, r, mu = last["x"], last["m"], last["r"], last["mu"]
    a, c = trace.grad_weights
    dy, vv = problem.dy, problem.v
    d_m, rel_s2 = last["d_m"], last["rel_s2"]
    mean = lambda z: np.mean(z, axis=axes, keepdims=True)  # noqa: E731
    total = lambda z: np.sum(z, axis=axes)  # noqa: E731
    keep = lambda sums: sums.reshape(M1.shape)  # noqa: E731  (a sum of `total` with the reduced axes kept)
    ady = np.abs(dy)
    M1 = np.abs(mean(dy))
    term = _elementwise(np.empty(x.shape), lambda x, dy, m, r: dy * ((x - m) * r), x, dy, m, r)  # dy xhat
    M2 = np.abs(mean(term))
    np.abs(term, out=term)
    sum_dy_xhat = total(term)  # sum |dy xhat|
    sum_dy = total(ady)
    def d_xhat(x, m, r, d_m, rel_s2):
        """r (d_m + |x - m| d_s2 / 2 (s2 + eps)) + 2 u_c |xhat|, xhat = (x - m) r"""
        return r * (d_m + 0.5 * np.abs(x - m) * rel_s2) + 2 * u_c * np.abs((x - m) * r)

    _elementwise(term, lambda x, ady, m, r, d_m, rel_s2: ady * d_xhat(x, m, r, d_m, rel_s2),
                 x, ady, m, r, d_m, rel_s2)
    sum_dy_dxhat = total(term)  # sum |dy| d_xhat
    mean_ady, mean_dy_xhat, mean_dy_dxhat = (keep(s_) / n for s_ in (sum_dy, sum_dy_xhat, sum_dy_dxhat))
    # A term the backward does not have (a or c = 0: inference) is left out, not multiplied by 0: with an
    # infinite input its factor is infinite, and 0 * inf would make the bound of a finite gradient NaN.
    aM1 = a * M1 if a else 0.0

    eta_dx = underflow("dx")

    def bound_dx(x, ady, dx, gamma, m, mu, r, d_m, rel_s2, M2, aM1, mean_ady, mean_dy_xhat, mean_dy_dxhat):
        xhat_mu = np.abs((x - mu) * r)
        cM2 = c * xhat_mu * M2 if c else 0.0
        T = gamma * r * (ady + aM1 + cM2)
        b_dx = (gamma * r * ((a * (n + 1) * u_c * mean_ady if a else 0.0)
                             + (c * (d_xhat(x, m, r, d_m, rel_s2) * M2
                                     + xhat_mu * ((n + 2) * u_c * mean_dy_xhat + mean_dy_dxhat)) if c else 0.0))
                + (4 * u_c + 2 * rel_s2) * T + u_o * np.abs(dx))
        return SAFETY * (b_dx + eta_dx)

    # (reuses the buffer: every term above is reduced already)
    put("dx", _elementwise(term, bound_dx, x, ady, trace["dx"], gamma, m, mu, r, d_m, rel_s2, M2, aM1, mean_ady,
                           mean_dy_xhat, mean_dy_dxhat),
        "|gamma| r [a (n+1) u_c mean|dy| + c (d_xhat |M2| + |xhat| ((n+2) u_c mean|dy xhat| + "
        "mean(|dy| d_xhat)))] + (4 u_c + 2 d_s2/(s2+eps)) T + u_o |dx|", final=True)
    put("dgamma", (n + 2) * u_c * sum_dy_xhat + sum_dy_dxhat + u_p * np.abs(trace["dgamma"]),
        "(n+2) u_c sum|dy xhat| + sum(|dy| d_xhat) + u_p |dgamma|")
    put("dbeta", (n + 1) * u_c * sum_dy + u_p * np.abs(trace["dbeta"]), "(n+1) u_c sum|dy| + u_p |dbeta|")
    if "d2x" in trace.quantities:  # second order: small cases only (complex step), whole-array expressions
        xhat = (x - m) * r
        cM2 = c * np.abs((x - mu) * r) * M2 if c else 0.0
        rho = 3 * last["rel_s2"] + 3 * r * last["d_m"]
        finite = np.isfinite(xhat)  # a non-finite input's channel is NaN throughout; it must not void the others'
        big = 1 + float(np.max(np.abs(xhat), where=finite, initial=0.0))
        V = mean(np.abs(vv)) * big
        D = mean(ady) * big
        t2 = gamma * r * r * (1 + np.abs(xhat)) ** 2 * (np.abs(vv) + V) * (ady + D)
        b_d2x = ((2 * n + 10) * u_c + rho) * t2 + u_o * np.abs(trace["d2x"])
        if a == 0.0 and c == 0.0:
            b_d2x = np.zeros_like(b_d2x)  # dx = gamma r dy does not depend on x: d2x is exactly 0
        put("d2x", b_d2x, "((2n+10) u_c + rho) |gamma| r^2 (1+|xhat|)^2 (|v|+V)(|dy|+D) + u_o |d2x|"
                          " (0 in inference: exact)", exact=a == 0.0 and c == 0.0)
        rho_c = (3 * last["rel_s2"] + 3 * r * last["d_m"]).reshape(-1)
        t2g = total(np.abs(vv) * r * (ady + aM1 + cM2))
        # Mixed precision (io narrower than compute, e.g. bfloat16 activations with float32 parameters under
        # autocast): the elementwise terms r dy v of the double backward are formed in the io format before they
        # are reduced, one rounding each.
        u_mixed = u_o if u_o > u_c else 0.0
        put("d2gamma", ((n + 6) * u_c + rho_c + u_mixed) * t2g + u_p * np.abs(trace["d2gamma"]),
            "((n+6) u_c + rho [+ u_o if io is narrower than compute]) r sum(|v| (|dy| + a|M1| + c|xhat_mu||M2|))"
            " + u_p |d2gamma|")
    return out
