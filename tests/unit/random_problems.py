"""Small random Problems and Conventions for the oracle's self-proof (deterministic per index)."""
from __future__ import annotations

import numpy as np

from reference import Convention, Problem


def random_convention(rng: np.random.Generator) -> Convention:
    """A real-world knob combination: every documented knob varies, deviations stay at their defaults
    except eps placement and normalize_var, which the forward (and so the mp check) fully defines."""
    averaging = rng.choice(["ema", "ema", "cumulative", "debiased_ema"])
    return Convention(
        running_var=rng.choice(["unbiased", "biased"]),
        batch_var_estimator=rng.choice(["unbiased", "biased"]),
        averaging=averaging,
        debias_hidden_init=rng.choice(["zeros", "initial_stats"]),
        first_step=rng.choice(["update", "update", "replace"]),
        train_normalizer=rng.choice(["batch", "batch", "running"]),
        normalize_var=rng.choice(["biased", "biased", "unbiased"]),
        eps_placement=rng.choice(["inside_sqrt", "inside_sqrt", "outside_sqrt"]),
    )


def random_problem(index: int, max_size: int = 48) -> tuple[Problem, Convention]:
    rng = np.random.default_rng(1000 + index)
    ndim = int(rng.integers(2, 6))
    while True:
        shape = tuple(int(s) for s in rng.integers(1, 5, size=ndim))
        if 2 <= int(np.prod(shape)) <= max_size:
            axis = int(rng.integers(0, ndim))
            if int(np.prod(shape)) // shape[axis] >= 2:
                break
    C = shape[axis]
    steps = int(rng.integers(1, 4))
    modes = tuple(rng.choice(["train", "train", "eval"]) for _ in range(steps))
    loc = rng.normal(0, 1, C) * rng.choice([0.0, 1.0, 10.0])
    scale = rng.uniform(0.2, 3.0, C)
    bshape = [1] * ndim
    bshape[axis] = C

    def batch():
        return rng.standard_normal(shape) * scale.reshape(bshape) + loc.reshape(bshape)

    conv = random_convention(rng)
    momentum = None if conv.averaging == "cumulative" else float(rng.choice([0.1, 0.5, 0.9, 0.01]))
    if conv.averaging == "debiased_ema" and momentum is None:
        momentum = 0.1
    affine = bool(rng.random() < 0.8)
    problem = Problem(
        xs=tuple(batch() for _ in range(steps)),
        modes=modes,
        axis=axis,
        gamma=rng.uniform(-2, 2, C) if affine else None,
        beta=rng.uniform(-1, 1, C) if affine else None,
        running_mean=rng.normal(0, 1, C),
        running_var=rng.uniform(0.5, 2.0, C),
        momentum=momentum,
        eps=float(rng.choice([1e-5, 1e-3, 0.1])),
        dy=rng.standard_normal(shape),
        v=rng.standard_normal(shape),
        track_running_stats=bool(rng.random() < 0.85),
        label=f"random-{index}",
    )
    return problem, conv
