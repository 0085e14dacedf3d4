"""The repro snippet every JAX-based adapter prints: framework-native code that recomputes what it observed."""
from __future__ import annotations


def snippet(p, define: list[str], params: str, state: str, read: str) -> str:
    """A framework-native repro: `define` imports the framework and defines `apply(params, state, x, train)`
    exactly as the adapter does; the loop, the jitting and the gradient below are the adapter's own (jitted
    the same way, so the numbers are bit for bit the ones it observed)."""
    train = "mode == 'train'" if p.track_running_stats else "True"  # no running statistics: batch ones
    lines = [
        "import jax, jax.numpy as jnp",
        "jax.config.update('jax_enable_x64', True)",
        f"dt = jnp.{p.dtype}",
        "cast = lambda a, d: jnp.asarray(np.asarray(a, dtype=d))",
        *define,
        f"params = {params}" if p.affine else "params = {}",
        f"state = {state}",
        "step = {t: jax.jit(lambda params, state, x, t=t: apply(params, state, x, t)) for t in (True, False)}",
        "ys, stats = [], []",
        "for x, mode in zip(p.xs, p.modes):",
        f"    train, before, x = {train}, state, cast(x, dt)",
        "    y, state = step[train](params, state, x)",
        f"    ys.append(y); stats.append({read})",
        "f64 = lambda a: np.asarray(a).astype(np.float64)",
        "observed = {'y': np.stack([f64(y) for y in ys])}",
    ]
    if p.track_running_stats:
        lines += ["observed.update({k: np.stack([f64(s[k]).reshape(-1) if k != 'num_batches_tracked' else f64(s[k])"
                  " for s in stats]) for k in stats[0]})"]
    if not p.quantities & {"dx", "dgamma", "dbeta"}:
        return "\n".join(lines)
    lines += [
        "grad = jax.jit(lambda params, state, x, dy:"
        " jax.vjp(lambda x, params: apply(params, state, x, train)[0], x, params)[1](dy))",
        "dx, dp = grad(params, before, x, cast(p.dy, y.dtype))",
        "observed['dx'] = f64(dx)",
    ]
    if p.affine:
        lines += ["observed.update(dgamma=f64(dp['gamma']).reshape(-1), dbeta=f64(dp['beta']).reshape(-1))"]
    if p.quantities & {"d2x", "d2gamma"}:  # gradients of <dx, v> with respect to x and gamma
        lines += [
            "def inner(x, gamma, params, state, dy, v):",
            "    prm = dict(params, gamma=gamma) if gamma is not None else params",
            "    dx = jax.vjp(lambda x, p: apply(p, state, x, train)[0], x, prm)[1](dy)[0]",
            "    return jnp.sum(dx * v)",
            "grad2 = jax.jit(lambda params, state, x, dy, v: jax.grad(inner, argnums=(0, 1))(x, params['gamma'], params,"
            " state, dy, v) if params else (jax.grad(inner)(x, None, params, state, dy, v), None))",
            "d2x, d2g = grad2(params, before, x, cast(p.dy, y.dtype), cast(p.v, dx.dtype))",
            "observed['d2x'] = f64(d2x)",
        ]
        if p.affine:
            lines += ["observed['d2gamma'] = f64(d2g).reshape(-1)"]
    return "\n".join(lines)
