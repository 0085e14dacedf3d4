"""Every analytic gradient of the oracle against complex-step and central finite differences (float64).

  complex step:  f'(x) = Im f(x + i h) / h, h = 1e-20: no subtraction, exact to rounding -> limit 1e-12
  central FD:    (f(x + h) - f(x - h)) / 2h, h = cbrt(u) * max(1, |x|) ~ 6e-6: truncation h^2 |f'''| / 6 plus
                 rounding u |f| / h, both ~1e-11 relative at this step -> limit 1e-7 (a 10^4 margin, because
                 |f'''| grows like 1/sigma^3 on the random problems' narrow channels)
The first-order objective is <y_last, dy>; the second-order objective is <dx, v> (analytic dx).
"""
from __future__ import annotations

import numpy as np
import pytest

from reference import simulate
from reference.convention import Convention

from .random_problems import random_problem

U = 2.0**-53
COMPLEX_LIMIT = 1e-12
FD_LIMIT = 1e-7
CASES = range(40)


def _with_last(problem, x_last=None, gamma=None, beta=None):
    changes = {}
    if x_last is not None:
        changes["xs"] = problem.xs[:-1] + (x_last,)
    if gamma is not None:
        changes["gamma"] = gamma
    if beta is not None:
        changes["beta"] = beta
    return problem.with_(**changes)


def loss(problem, conv):
    t = simulate(problem, conv, second_order=False)
    return np.sum(t["y"][-1] * problem.dy)


def second_loss(problem, conv):
    t = simulate(problem, conv, second_order=False)
    return np.sum(t["dx"] * problem.v)


def _derivatives(problem, conv, objective, wrt, method):
    """Numerical derivative of objective with respect to 'x' (the last batch), 'gamma' or 'beta'."""
    base = {"x": problem.xs[-1], "gamma": problem.gamma, "beta": problem.beta}[wrt]
    flat = base.reshape(-1)
    out = np.empty(flat.size)
    for i in range(flat.size):
        if method == "complex":
            h = 1e-20
            p = flat.astype(np.complex128)
            p[i] += 1j * h
            out[i] = np.imag(objective(_with_last(problem, **{_kw(wrt): p.reshape(base.shape)}), conv)) / h
        else:
            h = np.cbrt(U) * max(1.0, abs(flat[i]))
            up, dn = flat.copy(), flat.copy()
            up[i] += h
            dn[i] -= h
            fu = objective(_with_last(problem, **{_kw(wrt): up.reshape(base.shape)}), conv)
            fd = objective(_with_last(problem, **{_kw(wrt): dn.reshape(base.shape)}), conv)
            out[i] = (fu - fd) / (up[i] - dn[i])
    return out.reshape(base.shape)


def _kw(wrt):
    return {"x": "x_last", "gamma": "gamma", "beta": "beta"}[wrt]


def _rel(a, b, scale):
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), scale, 1e-300)


def _problem(index):
    problem, conv = random_problem(index, max_size=24)
    return problem, conv


@pytest.mark.parametrize("method,limit", [("complex", COMPLEX_LIMIT), ("central", FD_LIMIT)])
@pytest.mark.parametrize("index", CASES)
def test_first_order(index, method, limit):
    problem, conv = _problem(index)
    if not problem.affine:
        problem = problem.with_(gamma=np.full(problem.channels, 1.25), beta=np.full(problem.channels, -0.5))
    t = simulate(problem, conv, second_order=False)
    scale = float(np.max(np.abs(problem.dy))) * float(np.max(np.abs(problem.gamma)))
    for wrt, analytic in (("x", t["dx"]), ("gamma", t["dgamma"]), ("beta", t["dbeta"])):
        numeric = _derivatives(problem, conv, loss, wrt, method)
        err = _rel(analytic, numeric, scale * 1e-3)
        assert err <= limit, f"d/d{wrt} by {method}: {err:.2e} on {problem.label}"


@pytest.mark.parametrize("method,limit", [("complex", COMPLEX_LIMIT), ("central", FD_LIMIT)])
@pytest.mark.parametrize("index", CASES)
def test_second_order(index, method, limit):
    """The oracle's complex-step second order against differences of its analytic first order."""
    problem, conv = _problem(index)
    if not problem.affine:
        problem = problem.with_(gamma=np.full(problem.channels, 1.25), beta=np.full(problem.channels, -0.5))
    t = simulate(problem, conv)
    scale = float(np.max(np.abs(problem.dy) * np.max(np.abs(problem.v)))) * 1e-3
    for wrt, analytic in (("x", t["d2x"]), ("gamma", t["d2gamma"])):
        numeric = _derivatives(problem, conv, second_loss, wrt, method)
        err = _rel(analytic, numeric, scale)
        assert err <= limit, f"d<dx,v>/d{wrt} by {method}: {err:.2e} on {problem.label}"


@pytest.mark.parametrize(
    "knob", [dict(grad_through_mean=False), dict(grad_through_var=False),
             dict(grad_through_mean=False, grad_through_var=False)])
def test_gradient_knobs_drop_exactly_their_term(knob):
    """Dropping the gradient through a statistic equals differentiating with that statistic held fixed."""
    problem, _ = random_problem(3, max_size=24)
    problem = problem.with_(modes=("train",), xs=problem.xs[:1], gamma=np.full(problem.channels, 0.75),
                            beta=np.zeros(problem.channels), track_running_stats=True)
    conv = Convention(**knob)
    analytic = simulate(problem, conv, second_order=False)["dx"]
    x = problem.xs[0]
    axes = tuple(a for a in range(x.ndim) if a != problem.axis)
    mu0 = x.mean(axis=axes, keepdims=True)
    v0 = x.var(axis=axes, keepdims=True)

    def frozen_loss(xp):
        mu = xp.mean(axis=axes, keepdims=True) if knob.get("grad_through_mean", True) else mu0
        d = xp - xp.mean(axis=axes, keepdims=True)
        var = (d * d).mean(axis=axes, keepdims=True) if knob.get("grad_through_var", True) else v0
        g = 0.75
        return np.sum(g * (xp - mu) / np.sqrt(var + problem.eps) * problem.dy)

    flat = x.reshape(-1)
    numeric = np.empty(flat.size)
    for i in range(flat.size):
        p = flat.astype(np.complex128)
        p[i] += 1e-20j
        numeric[i] = np.imag(frozen_loss(p.reshape(x.shape))) / 1e-20
    # frozen statistics only change the derivative, not the value: the value sees the live statistics
    assert np.max(np.abs(analytic - numeric.reshape(x.shape))) <= 1e-12 * np.max(np.abs(numeric))


# -- the in-place float64 backward against the expressions it replaces, bit for bit ---------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from reference import normalize as nz  # noqa: E402


def _bits(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64)).view(np.int64)


@settings(max_examples=150, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), axis_pick=st.integers(0, 3),
       a=st.sampled_from([0.0, 1.0, 0.3]), c=st.sampled_from([0.0, 1.0, 0.3, 4.0 / 3.0]),
       placement=st.sampled_from(["inside_sqrt", "outside_sqrt"]), seed=st.integers(0, 2**32 - 1))
def test_the_in_place_float64_backward_is_the_expressions_bit_for_bit(shape, axis_pick, a, c, placement, seed):
    """normalize._backward_float64 forms the expressions' results in place; every element must come out with the
    same bits (the same operations in the same order), for every combination of the gradient's terms."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.01, 100) + rng.uniform(-10, 10)
    dy = rng.standard_normal(shape)
    axis = axis_pick % len(shape)
    axes = tuple(k for k in range(len(shape)) if k != axis)
    per = [1] * len(shape)
    per[axis] = shape[axis]
    gamma = rng.uniform(-2, 2, per)
    mu = x.mean(axis=axes, keepdims=True)
    norm = nz.Normalizer(m=mu + rng.uniform(-0.1, 0.1, per), s2=rng.uniform(0.01, 4, per), mu=mu, a=a, c=c,
                         eps=1e-5, eps_placement=placement)
    n = int(np.prod([shape[k] for k in axes], dtype=np.int64))
    r = nz.reciprocal_std(norm.s2, norm.eps, norm.eps_placement)
    fast = nz._backward_float64(x, dy, gamma, norm, r, axes, n)
    spec = nz._backward_expressions(x, dy, gamma, norm, r, axes, n)
    for got, want in zip(fast, spec):
        assert got.shape == want.shape
        assert np.array_equal(_bits(got), _bits(want))

