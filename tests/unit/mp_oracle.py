"""An independent BatchNorm in mpmath at 50 significant digits: the yardstick for the float64 oracle.

Written from the definitions, element by element, sharing no code with `reference`:
  - the forward is the textbook formula with per-channel sums in exact-enough arithmetic;
  - first-order gradients are *not* the analytic formula: they are central differences of the forward
    (step 1e-20, truncation error ~1e-40), so they check the oracle's derivation, not just its arithmetic;
  - second-order gradients are central differences (step 1e-12) of those first-order differences.
"""
from __future__ import annotations

import mpmath as mp
import numpy as np

DPS = 50
H1 = mp.mpf("1e-20")
H2 = mp.mpf("1e-12")


def _channels(shape, axis):
    return [int(i) for i in np.unravel_index(np.arange(int(np.prod(shape))), shape)[axis]]


class MPBatchNorm:
    def __init__(self, problem, convention):
        self.p, self.conv = problem, convention
        self.shape, self.axis = problem.shape, problem.axis
        self.C = problem.channels
        self.n = problem.reduced_count
        self.ch = _channels(self.shape, self.axis)
        alpha, eps = problem.effective(convention)
        self.alpha = None if alpha is None else mp.mpf(alpha)
        self.eps = mp.mpf(eps)

    # -- helpers on flat lists
    def _mean_var(self, x):
        C, n = self.C, self.n
        s = [mp.mpf(0)] * C
        for xi, c in zip(x, self.ch):
            s[c] += xi
        mean = [si / n for si in s]
        q = [mp.mpf(0)] * C
        for xi, c in zip(x, self.ch):
            q[c] += (xi - mean[c]) ** 2
        return mean, [qi / n for qi in q]

    def _r(self, s2):
        if self.conv.eps_placement == "inside_sqrt":
            return 1 / mp.sqrt(s2 + self.eps)
        return 1 / (mp.sqrt(s2) + self.eps)

    def initial_state(self):
        Rm = [mp.mpf(float(v)) for v in self.p.running_mean]
        Rv = [mp.mpf(float(v)) for v in self.p.running_var]
        if self.conv.debias_hidden_init == "zeros":
            Hm, Hv = [mp.mpf(0)] * self.C, [mp.mpf(0)] * self.C
        else:
            Hm, Hv = list(Rm), list(Rv)
        return (Rm, Rv, Hm, Hv, 0)

    def step(self, state, x, mode, gamma, beta):
        """One step: (y, new state, batch mean, batch var as exposed)."""
        conv, C, n = self.conv, self.C, self.n
        Rm, Rv, Hm, Hv, count = list(state[0]), list(state[1]), list(state[2]), list(state[3]), state[4]
        mean, var = self._mean_var(x)
        if mode == "train" and self.p.track_running_stats:
            Bv = [v * mp.mpf(n) / (n - 1) for v in var] if conv.running_var == "unbiased" else var
            first = count == 0
            count += 1
            for c in range(C):
                if conv.first_step == "replace" and first:
                    Rm[c], Rv[c] = mean[c], Bv[c]
                elif conv.averaging == "cumulative" or self.alpha is None:
                    w = mp.mpf(1) / (count + conv.cumulative_offset)
                    Rm[c] = (1 - w) * Rm[c] + w * mean[c]
                    Rv[c] = (1 - w) * Rv[c] + w * Bv[c]
                elif conv.averaging == "ema":
                    Rm[c] = (1 - self.alpha) * Rm[c] + self.alpha * mean[c]
                    Rv[c] = (1 - self.alpha) * Rv[c] + self.alpha * Bv[c]
                else:  # debiased_ema
                    Hm[c] = (1 - self.alpha) * Hm[c] + self.alpha * mean[c]
                    Hv[c] = (1 - self.alpha) * Hv[c] + self.alpha * Bv[c]
                    d = 1 - (1 - self.alpha) ** count
                    Rm[c], Rv[c] = Hm[c] / d, Hv[c] / d
        if mode == "eval" and self.p.track_running_stats:
            m, s2 = list(Rm), list(Rv)
        elif mode == "train" and self.p.track_running_stats and conv.train_normalizer == "running":
            m, s2 = list(Rm), list(Rv)
        elif conv.normalize_var == "unbiased":
            m, s2 = mean, [v * n / (n - 1) for v in var]
        else:
            m, s2 = mean, var
        r = [self._r(v) for v in s2]
        y = [gamma[c] * (xi - m[c]) * r[c] + beta[c] for xi, c in zip(x, self.ch)]
        bvar = [v * n / (n - 1) for v in var] if conv.batch_var_estimator == "unbiased" else var
        return y, (Rm, Rv, Hm, Hv, count), mean, bvar

    def run(self, xs_flat, gamma, beta):
        """All steps: (ys, running means, running vars, counts, batch means, batch vars, state before last)."""
        state = self.initial_state()
        ys, rms, rvs, counts, bms, bvs = [], [], [], [], [], []
        before_last = state
        for x, mode in zip(xs_flat, self.p.modes):
            before_last = state
            y, state, mean, bvar = self.step(state, x, mode, gamma, beta)
            if mode == "train":
                bms.append(mean)
                bvs.append(bvar)
            ys.append(y)
            rms.append(list(state[0]))
            rvs.append(list(state[1]))
            counts.append(state[4])
        self.before_last = before_last
        return ys, rms, rvs, counts, bms, bvs

    # -- the objective the gradients differentiate: <y_last, dy>, from the state before the last step
    def loss(self, x_last, gamma, beta):
        y = self.step(self.before_last, x_last, self.p.modes[-1], gamma, beta)[0]
        return mp.fsum(yi * di for yi, di in zip(y, self.dy))

    def first_order(self, xs, gamma, beta, h=H1):
        last = xs[-1]
        dx = []
        for i in range(len(last)):
            up, dn = list(last), list(last)
            up[i] += h
            dn[i] -= h
            dx.append((self.loss(up, gamma, beta) - self.loss(dn, gamma, beta)) / (2 * h))
        dg = []
        for c in range(self.C):
            up, dn = list(gamma), list(gamma)
            up[c] += h
            dn[c] -= h
            dg.append((self.loss(last, up, beta) - self.loss(last, dn, beta)) / (2 * h))
        db = []
        for c in range(self.C):
            up, dn = list(beta), list(beta)
            up[c] += h
            dn[c] -= h
            db.append((self.loss(last, gamma, up) - self.loss(last, gamma, dn)) / (2 * h))
        return dx, dg, db

    def second_order(self, xs, gamma, beta):
        def g(xs_, gamma_):
            dx = self.first_order(xs_, gamma_, beta)[0]
            return mp.fsum(a * b for a, b in zip(dx, self.v))

        last = xs[-1]
        d2x = []
        for i in range(len(last)):
            up, dn = list(last), list(last)
            up[i] += H2
            dn[i] -= H2
            d2x.append((g(xs[:-1] + [up], gamma) - g(xs[:-1] + [dn], gamma)) / (2 * H2))
        d2g = []
        for c in range(self.C):
            up, dn = list(gamma), list(gamma)
            up[c] += H2
            dn[c] -= H2
            d2g.append((g(xs, up) - g(xs, dn)) / (2 * H2))
        return d2x, d2g


def evaluate(problem, convention, second_order: bool = False) -> dict[str, np.ndarray]:
    """Every quantity of `problem` under `convention`, computed at 50 digits, returned as float64."""
    with mp.workdps(DPS):
        bn = MPBatchNorm(problem, convention)
        xs = [[mp.mpf(float(v)) for v in x.reshape(-1)] for x in problem.xs]
        gamma = [mp.mpf(float(v)) for v in problem.gamma_or_ones()]
        beta = [mp.mpf(float(v)) for v in problem.beta_or_zeros()]
        bn.dy = [mp.mpf(float(v)) for v in problem.dy.reshape(-1)]
        bn.v = [mp.mpf(float(v)) for v in problem.v.reshape(-1)]
        ys, rms, rvs, counts, bms, bvs = bn.run(xs, gamma, beta)
        dx, dg, db = bn.first_order(xs, gamma, beta)
        f = np.vectorize(float)
        out = {
            "y": f(np.array(ys, dtype=object)).reshape((problem.steps,) + problem.shape),
            "running_mean": f(np.array(rms, dtype=object)),
            "running_var": f(np.array(rvs, dtype=object)),
            "num_batches_tracked": np.array(counts, dtype=np.float64),
            "dx": f(np.array(dx, dtype=object)).reshape(problem.shape),
            "dgamma": f(np.array(dg, dtype=object)),
            "dbeta": f(np.array(db, dtype=object)),
        }
        if bms:
            out["batch_mean"] = f(np.array(bms, dtype=object))
            out["batch_var"] = f(np.array(bvs, dtype=object))
        if second_order:
            d2x, d2g = bn.second_order(xs, gamma, beta)
            out["d2x"] = f(np.array(d2x, dtype=object)).reshape(problem.shape)
            out["d2gamma"] = f(np.array(d2g, dtype=object))
        return out
