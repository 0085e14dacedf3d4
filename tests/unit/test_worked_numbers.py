"""The worked numbers of ../shared/conventions.md ("Worked numbers"), reproduced by the oracle."""
from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest

from reference import Convention, Problem, simulate

TORCH = Convention()  # weight on new 0.1, unbiased running variance
KERAS = Convention(momentum_form="weight_on_old", default_momentum=0.99, default_eps=1e-3, running_var="biased")
MATLAB = Convention(running_var="biased")  # MeanDecay/VarianceDecay 0.1 on the new batch, biased var(X,1)


def problem(x, modes=("train",), gamma=None, beta=None, rm=None, rv=None, momentum=0.1, eps=1e-5, axis=1):
    C = x.shape[axis]
    return Problem(
        xs=(x,) * len(modes) if isinstance(modes, tuple) else (x,),
        modes=modes,
        axis=axis,
        gamma=np.ones(C) if gamma is None else np.asarray(gamma, float),
        beta=np.zeros(C) if beta is None else np.asarray(beta, float),
        running_mean=np.zeros(C) if rm is None else np.asarray(rm, float),
        running_var=np.ones(C) if rv is None else np.asarray(rv, float),
        momentum=momentum,
        eps=eps,
        dy=np.zeros_like(x),
        v=np.zeros_like(x),
    )


def ulps(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.spacing(np.abs(np.asarray(b))))


def test_1_channel_statistics_and_one_torch_step():
    x = np.stack([np.eye(2, 4).reshape(2, 2, 2), np.arange(8.0).reshape(2, 2, 2)])
    assert x.shape == (2, 2, 2, 2)
    t = simulate(problem(x), TORCH, second_order=False)
    assert t.step_mean[0].tolist() == [0.875, 2.875]
    assert t.step_var[0].tolist() == [1.109375, 7.609375]
    assert np.allclose(t.step_var[0] * 8 / 7, [1.2678571428571428, 8.696428571428571], rtol=0, atol=1e-15)
    # alpha = 0.1 is not a binary fraction: 0.1 * 0.875 rounds to 0.0875 + 1 ulp
    np.testing.assert_allclose(t["running_mean"][0], [0.0875, 0.2875], rtol=2e-16)
    np.testing.assert_allclose(t["running_var"][0], [1.0267857142857142, 1.7696428571428573], rtol=1e-15)


@pytest.mark.parametrize(
    "gamma,beta,mm,mv,expected",
    [
        (0.22297101, 0.49253803, 0.36868709, 0.41429576, [0.71096909, 2.09494853]),
        (0.80644524, 0.0, 0.05885344, 0.91000736, [0.79519051, 4.17485714]),  # center=False: beta = 0
    ],
)
def test_2_keras_inference(gamma, beta, mm, mv, expected):
    """The stated outputs are Keras *float32* results (x * inv + (beta - mean * inv) in float32 reproduces
    them to the printed digit), so the exact answer on the float32 parameters is within 2 float32 ulp."""
    f32 = [float(np.float32(v)) for v in (gamma, beta, mm, mv, 0.001)]
    x = np.array([[1.0], [5.0]])  # batch of 2, one feature
    p = problem(x, modes=("eval",), gamma=[f32[0]], beta=[f32[1]], rm=[f32[2]], rv=[f32[3]], eps=f32[4])
    y = simulate(p, KERAS, second_order=False)["y"][0].reshape(-1)
    ulp32 = np.spacing(np.float32(expected)).astype(np.float64)
    assert np.all(np.abs(y - expected) <= 2 * ulp32), (y, expected)


def test_3_matlab_training_syntax():
    """5 inputs + 3 outputs: output normalized with the *batch* statistics, returned statistics are
    phi * batch + (1 - phi) * given with the biased batch variance; 1 output: normalized with the given."""
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(6, 2))
    given_m, given_v = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    train = simulate(problem(x, rm=given_m, rv=given_v, momentum=0.1), MATLAB, second_order=False)
    bm, bv = x.mean(axis=0), x.var(axis=0)  # var(X, 1): biased
    np.testing.assert_allclose(train["running_mean"][0], 0.1 * bm + 0.9 * given_m, rtol=1e-15)
    np.testing.assert_allclose(train["running_var"][0], 0.1 * bv + 0.9 * given_v, rtol=1e-15)
    np.testing.assert_allclose(train["y"][0], (x - bm) / np.sqrt(bv + 1e-5), rtol=1e-14)
    infer = simulate(problem(x, modes=("eval",), rm=given_m, rv=given_v), MATLAB, second_order=False)
    np.testing.assert_allclose(infer["y"][0], (x - given_m) / np.sqrt(given_v + 1e-5), rtol=1e-14)


def test_4_torch_float64_one_step():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2, 2)) * np.array([1, 2, 3])[None, :, None, None] + np.array([0, 1, -2])[
        None, :, None, None]
    t = simulate(problem(x, gamma=[1.5, 0.5, -2], beta=[0.1, -0.2, 0.3]), TORCH, second_order=False)
    stated_mean = [-0.01848018993223779, 0.14495390078885048, -0.149494939320007]
    stated_var = [0.9864455715450848, 1.2061170345846448, 1.5666112817520075]
    assert t["running_var"][0].tolist() == stated_var  # bit for bit
    # The stated means are torch's float64 output, which carries torch's summation order: they are within
    # 2 ulp of the oracle, and the oracle's are the correctly rounded exact values (checked at 40 digits).
    assert ulps(t["running_mean"][0], stated_mean) <= 2
    with mp.workdps(40):
        for c in range(3):
            exact = mp.fsum(mp.mpf(float(v)) for v in x[:, c].ravel()) / 16 / 10
            assert t["running_mean"][0][c] == float(exact)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_5_convergence_on_one_repeated_batch(estimator):
    """Training repeatedly on one batch drives R to the batch statistics: to the unbiased variance when
    the running estimator is unbiased, so inference then differs from training by
    sqrt((var_b + eps) / (var_u + eps)); with a biased estimator the two outputs converge to equality."""
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, size=(20, 3))
    steps = 400  # 0.9^400 ~ 5e-19: converged to float64
    eps = 1e-5
    p = problem(x, modes=("train",) * steps + ("eval",), eps=eps)
    t = simulate(p, Convention(running_var=estimator), second_order=False)
    y_train, y_eval = t["y"][-2], t["y"][-1]
    var_b = x.var(axis=0)
    var_u = var_b * 20 / 19
    np.testing.assert_allclose(t["running_mean"][-1], x.mean(axis=0), rtol=1e-13, atol=1e-15)
    if estimator == "biased":
        np.testing.assert_allclose(t["running_var"][-1], var_b, rtol=1e-13)
        np.testing.assert_allclose(y_eval, y_train, rtol=1e-12, atol=1e-14)
    else:
        np.testing.assert_allclose(t["running_var"][-1], var_u, rtol=1e-13)
        ratio = y_train / y_eval  # gamma = 1, beta = 0: y is proportional to (x - mean)
        np.testing.assert_allclose(ratio, np.broadcast_to(np.sqrt((var_u + eps) / (var_b + eps)), x.shape),
                                   rtol=1e-12)


def test_5_ema_over_random_batches_fluctuates_around_population():
    """2000 batches of 20x3x1x1 N(0,1) at alpha 0.1: R fluctuates around (0, 1); the stated mean absolute
    difference of the running mean is ~0.06 (std of an EMA of batch means: sqrt(alpha/(2-alpha)/20))."""
    rng = np.random.default_rng(0)
    xs = tuple(rng.standard_normal((20, 3, 1, 1)) for _ in range(2000))
    p = Problem(xs=xs, modes=("train",) * 2000, axis=1, gamma=np.ones(3), beta=np.zeros(3),
                running_mean=np.zeros(3), running_var=np.ones(3), momentum=0.1, eps=1e-5,
                dy=np.zeros((20, 3, 1, 1)), v=np.zeros((20, 3, 1, 1)))
    t = simulate(p, TORCH, second_order=False)
    mad = float(np.mean(np.abs(t["running_mean"][1000:])))
    expected = np.sqrt(2 / np.pi) * np.sqrt(0.1 / 1.9 / 20)  # E|N(0, s^2)| = s sqrt(2/pi)
    assert 0.5 * expected < mad < 1.5 * expected
    assert abs(float(np.mean(t["running_var"][1000:])) - 1.0) < 0.1
