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
STEP_ROWS = 1 << 13  # numbers per per-step array in a chunk of steps of `bounds` (64 KB of float64)


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
    # The initial statistics are exact in the case dtype; stored in a narrower format they are rounded first.
    d_rm = (u_s if u_s > u_o else 0.0) * np.abs(problem.running_mean)
    d_rv = (u_s if u_s > u_o else 0.0) * np.abs(problem.running_var)
    # Steps are taken a chunk at a time (STEP_ROWS numbers per chunk and per-step array): every step of a chunk
    # is formed at once, over (steps, C) rows, with the same operations in the same order on every element as one
    # step's own expression, so the same bits. A case of 2000 small steps made ~80 NumPy calls per step in a
    # Python loop; whole-case (steps, C) temporaries instead cost more than they saved, in first touches of fresh
    # memory (~10x a pass over memory already touched, on the 2-core machines measured); a chunk's temporaries are
    # small and reused. What stays a loop over steps is what is sequential or per batch: each step's reduction
    # of |x| and the error recursion of the running statistics.
    steps, modes, C = problem.steps, tuple(convention.modes(problem)), problem.channels
    w = trace.weights
    sources = np.array(trace.sources)
    bfac = n / (n - 1) if (convention.batch_var_estimator == "unbiased" and n > 1) else 1.0
    x_size = int(np.prod(problem.shape))
    gamma_t, beta_t = gamma[None], beta[None]  # with the leading steps axis of a chunk's stacked x's

    def stacked(rows):
        """(k, C) rows -> broadcasting along the channel axis of k steps stacked: (k, *x.shape)."""
        shape = [len(rows)] + [1] * nd
        shape[1 + axis % nd] = C
        return rows.reshape(shape)

    def y_fn(x, y, gamma, r, d_m, m, rel_s2, beta):  # y's bound, SAFETY * (B + eta) as `put` makes it
        return SAFETY * ((gamma * r * (d_m + 0.5 * np.abs(x - m) * rel_s2)
                          + 4 * u_c * (gamma * r * (np.abs(x) + np.abs(m)) + beta) + u_o * np.abs(y)) + eta_y)

    y_bound = np.empty((steps, *problem.shape))
    rms, rvs = np.empty((steps, C)), np.empty((steps, C))
    bms, bvs, kappa, rho_var = [], [], [], []
    rm_last, rv_last = problem.running_mean, problem.running_var  # the running statistics before the chunk
    per_chunk = max(1, STEP_ROWS // C)
    for t0 in range(0, steps, per_chunk):
        t1 = min(t0 + per_chunk, steps)
        ts = slice(t0, t1)
        mu, v = trace.step_mean[ts], trace.step_var[ts]
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa += [float(k) for k in np.max(np.sqrt(1.0 + np.where(v > 0, mu * mu / v, 0.0)), axis=1)]
        # mean |x| per step: np.mean's own bits (its sum divided by the count), without its ~25 us of Python
        mean_abs = np.stack([np.add.reduce(np.abs(x), axis=axes) / n for x in problem.xs[ts]])
        d_mu = (n + 1) * u_c * mean_abs + (n + 1) * eta_c
        d_v = ((n + 4) * u_c * (v + mu * mu) + (n + 4) * eta_c if fast
               else (n + 3) * u_c * v + d_mu * d_mu + (n + 3) * eta_c)
        rho_var += [float(r_) for r_ in np.max(d_v / np.maximum(v + eps, np.finfo(float).tiny), axis=1)]
        train = [i for i, mode in enumerate(modes[ts]) if mode == "train"]
        if train:
            bms.append((d_mu + max(u_o, u_s) * np.abs(mu))[train])
            bvs.append((bfac * d_v + max(u_o, u_s) * bfac * np.abs(v))[train])

        # Running statistics, the error recursion: a step updates them in training (in inference only under a
        # diagnosis hypothesis: forgot eval()). |w| and |1 - w|: an error bound adds magnitudes. A weight outside
        # [0, 1] (a debiased or hypothesized update) would otherwise make the bound negative, and a negative
        # bound passes anything. Every term but the recursion's own is formed for the chunk's steps at once.
        on_old, on_new = np.abs(1 - w[ts])[:, None], np.abs(w[ts])[:, None]
        rm, rv = trace["running_mean"][ts], trace["running_var"][ts]
        rm_prev, rv_prev = np.concatenate([rm_last[None], rm[:-1]]), np.concatenate([rv_last[None], rv[:-1]])
        new_m, new_v = on_new * d_mu, on_new * run_fac * d_v
        rounding_m = 4 * u_c * (on_old * np.abs(rm_prev) + on_new * np.abs(mu))
        rounding_v = 4 * u_c * (on_old * np.abs(rv_prev) + on_new * run_fac * np.abs(v))
        stored_m, stored_v = u_s * np.abs(rm), u_s * np.abs(rv)
        rms_before, rvs_before = np.empty_like(mu), np.empty_like(v)
        for i, t in enumerate(range(t0, t1)):
            rms_before[i], rvs_before[i] = d_rm, d_rv
            if problem.track_running_stats and (modes[t] == "train" or w[t] != 0.0):
                d_rm = on_old[i, 0] * d_rm + new_m[i] + rounding_m[i] + stored_m[i] + 4 * eta_c + eta_s
                d_rv = on_old[i, 0] * d_rv + new_v[i] + rounding_v[i] + stored_v[i] + 4 * eta_c + eta_s
            rms[t], rvs[t] = d_rm, d_rv
        rm_last, rv_last = rm[-1], rv[-1]

        # What each step normalized with, and its error: the batch's, or the running statistics before or after
        source = sources[ts, None]
        d_m = np.where(source == "running", rms_before, np.where(source == "updated", rms[ts], d_mu))
        d_s2 = np.where(source == "running", rvs_before, np.where(source == "updated", rvs[ts], norm_fac * d_v))
        m, s2 = trace.norm_mean[ts], trace.norm_var[ts]
        if u_h:
            eta_h, held = tiny(saved), s2 + eps  # held: 1 / r^2, r the inverse std it holds
            d_m = d_m + u_h * np.abs(m) + eta_h
            d_s2 = d_s2 + 2 * (u_h + eta_h * np.sqrt(held)) * held
        r = 1.0 / np.sqrt(s2 + eps)
        rel_s2 = d_s2 / (s2 + eps)
        if (t1 - t0) * x_size <= BLOCK:  # small batches: the chunk's steps stacked, one elementwise pass
            _elementwise(y_bound[ts], y_fn, np.stack(problem.xs[ts]), trace["y"][ts], gamma_t, stacked(r),
                         stacked(d_m), stacked(m), stacked(rel_s2), beta_t)
        else:  # large ones: a pass per step, over its own x (no copy of the batches)
            for i, t in enumerate(range(t0, t1)):
                _elementwise(y_bound[t], y_fn, problem.xs[t], trace["y"][t], gamma, ch(r[i]), ch(d_m[i]), ch(m[i]),
                             ch(rel_s2[i]), beta)
    last = dict(x=problem.xs[-1], m=ch(m[-1]), s2=ch(s2[-1]), r=ch(r[-1]), d_m=ch(d_m[-1]), d_s2=ch(d_s2[-1]),
                rel_s2=ch(rel_s2[-1]), mu=ch(mu[-1]))

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
    put("running_mean", rms,
        "EMA recursion: |1-w| d_R + |w| d_mu + 4 u_c (|1-w| |R| + |w| |mu|) + u_s |R| + 4 eta_c + eta_s")
    put("running_var", rvs,
        "EMA recursion: |1-w| d_R + |w| f d_v + 4 u_c (|1-w| |R| + |w| f v) + u_s |R| + 4 eta_c + eta_s")
    put("num_batches_tracked", np.zeros(problem.steps), "exact (an integer counter)", exact=True)
    if bms:
        put("batch_mean", np.concatenate(bms), "d_mu = (n+1) (u_c mean|x| + eta_c) + u |mu|")
        put("batch_var", np.concatenate(bvs), f"d_v ({stats_model}) + u |v|")

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
