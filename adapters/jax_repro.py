"""The repro snippet every JAX-based adapter prints: framework-native code that recomputes what it observed, on
the path it observed it on (adapters/jax_common.py: jitted, no-jit, vmap, sync)."""
from __future__ import annotations

import sys

from reference import FIRST_ORDER, SECOND_ORDER

from . import jax_common as jc


def snippet(p, define: list[str], params: str, state: str, read: str, path: str = jc.EAGER,
            ensemble: list[str] | None = None, sharded: bool = False) -> str:
    """A framework-native repro: `define` imports the framework and defines `apply(params, state, x, train)`
    exactly as the adapter does on `path` (its configuration on that path: `axis_name` on sync, and a `mask=`
    argument where sync pads unequal shards); the path's transformation, the loop, the jitting and the gradients
    below are the adapter's own (jax_common.run, jitted the same way, so the numbers are bit for bit the ones
    it observed). `ensemble`: the adapter's own vmap ensemble over `params`/`state` (default: jax.vmap of
    `apply`, as jax_common.vmapped); `sharded`: the sync path is jax.jit over a batch sharded across the devices
    (jax_common.batch_sharding) rather than jax.shard_map."""
    train = "mode == 'train'" if p.track_running_stats else "True"  # no running statistics: batch ones
    pick = "pick" if path == jc.VMAP else ""
    lines = []
    if path == jc.SYNC:
        lines += [
            "import os  # the sync path's logical CPU devices: XLA reads its flags once, before JAX starts",
            f"os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count={jc.DEVICES} ' "
            "+ os.environ.get('XLA_FLAGS', '')",
        ]
    lines += [
        "import jax, jax.numpy as jnp",
        "jax.config.update('jax_enable_x64', True)",
        f"dt = jnp.{p.dtype}",
        "cast = lambda a, d: jnp.asarray(np.asarray(a, dtype=d))",
        *define,
        f"params = {params}" if p.affine else "params = {}",
        f"state = {state}",
        *_path_lines(p, path, ensemble, sharded),
    ]
    place = "jax.device_put(cast(x, dt), shard)" if path == jc.SYNC and sharded else "cast(x, dt)"
    gradients = bool(p.quantities & (FIRST_ORDER | SECOND_ORDER))  # as Adapter.wants_gradients
    read_line = (f"    ys.append(y); stats.append(read({pick}(state)))" if pick else
                 "    ys.append(y); stats.append(read(state))")
    body = [
        "step = {t: jax.jit(lambda params, state, x, t=t: apply(params, state, x, t)) for t in (True, False)}",
        *(_gradient_program(p) if gradients else []),
        f"read = lambda state: {read}",
        "ys, stats = [], []",
    ]
    if gradients:  # as jax_common._steps: a last training step is one program with its gradients
        body += [
            "for k, (x, mode) in enumerate(zip(p.xs, p.modes)):",
            f"    train, before, x = {train}, state, {place}",
            "    if k == len(p.xs) - 1 and train:  # a train step: forward, update and gradients together",
            "        y, state, *d = grads[train](params, state, x, dy, v)",
            "    else:",
            "        y, state = step[train](params, state, x)",
            read_line,
            "if not train:  # the inference forward ran alone; its gradients are a program of their own",
            "    d = grads[train](params, before, x, dy, v)[2:]",
            "dx, dp, d2x, d2g = d",
        ]
    else:
        body += [
            "for x, mode in zip(p.xs, p.modes):",
            f"    train, before, x = {train}, state, {place}",
            "    y, state = step[train](params, state, x)",
            read_line,
        ]
    body += [
        "f64 = lambda a: np.asarray(a).astype(np.float64)",
        "observed = {'y': np.stack([f64(y) for y in ys])}",
    ]
    if p.track_running_stats:
        body += ["observed.update({k: np.stack([f64(s[k]).reshape(-1) if k != 'num_batches_tracked' else f64(s[k])"
                 " for s in stats]) for k in stats[0]})"]
    if gradients:
        body += _gradient_lines(p, pick)
    if path == jc.NO_JIT:  # as jax_common.run: every step and gradient op by op
        return "\n".join(lines + ["with jax.disable_jit():  # op by op, as the no-jit path runs"]
                         + ["    " + line for line in body])
    return "\n".join(lines + body)


def _gradient_program(p) -> list[str]:
    """jax_common.gradients, written out: the forward and its gradients as one jitted program per mode."""
    second = bool(p.quantities & SECOND_ORDER)
    lines = [
        "def first(params, state, x, dy, train):  # y, the new state and the gradients of <y, dy>",
        "    y, vjp, new = jax.vjp(lambda x, prm: apply(prm, state, x, train), x, params, has_aux=True)",
        "    return (y, new, *vjp(dy.astype(y.dtype)))",
        "def gradients(params, state, x, dy, v, train):",
        "    y, new, dx, dp = first(params, state, x, dy, train)",
    ]
    if second:
        lines += [
            "    def inner(x, gamma):  # <dx, v> as a function of x and gamma",
            "        prm = dict(params, gamma=gamma) if gamma is not None else params",
            "        return jnp.sum(first(prm, state, x, dy, train)[2] * v.astype(dx.dtype))",
            "    d2x, d2g = (jax.grad(inner, argnums=(0, 1))(x, params['gamma']) if params else",
            "                (jax.grad(lambda x: inner(x, None))(x), None))",
            "    return y, new, dx, dp, d2x, d2g",
        ]
    else:
        lines += ["    return y, new, dx, dp, None, None"]
    return lines + [
        "grads = {t: jax.jit(lambda params, state, x, dy, v, t=t: gradients(params, state, x, dy, v, t))"
        " for t in (True, False)}",
        "dy = cast(p.dy, dt)",
        "v = cast(p.v, dt)" if second else "v = dy  # read by the second order only",
    ]


def _gradient_lines(p, pick: str) -> list[str]:
    lines = ["observed['dx'] = f64(dx)"]
    if p.affine:
        lines += [f"dp = {pick}(dp)" if pick else "",
                  "observed.update(dgamma=f64(dp['gamma']).reshape(-1), dbeta=f64(dp['beta']).reshape(-1))"]
    if p.quantities & SECOND_ORDER:
        lines += ["observed['d2x'] = f64(d2x)"]
        if p.affine:
            lines += [f"observed['d2gamma'] = f64({pick}(d2g)).reshape(-1)" if pick else
                      "observed['d2gamma'] = f64(d2g).reshape(-1)"]
    return [line for line in lines if line]


def _path_lines(p, path: str, ensemble: list[str] | None, sharded: bool) -> list[str]:
    """How the path transforms `apply` (and the parameters and state), as jax_common.run does."""
    if path == jc.VMAP:
        return [
            "# an ensemble of 2 copies: copy 0 a decoy (floats x -> 1.5 x + 0.25), copy 1 the case's (what is read)",
            *(ensemble or [
                "module_apply = apply",
                "def apply(params, state, x, train):  # jax.vmap over stacked parameters and state, x shared",
                "    ys, states = jax.vmap(lambda prm, st: module_apply(prm, st, x, train))(params, state)",
                "    return ys[1], states",
            ]),
            "decoy = lambda a: jnp.stack([(jnp.asarray(a) * 1.5 + 0.25).astype(jnp.asarray(a).dtype)"
            " if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else jnp.asarray(a), jnp.asarray(a)])",
            "params, state = jax.tree.map(decoy, params), jax.tree.map(decoy, state)",
            "pick = lambda tree: jax.tree.map(lambda a: a[1], tree)",
        ]
    if path != jc.SYNC:
        return []
    if sharded:
        return [
            "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P",
            "# the batch split over the devices; jax.jit partitions the one-device step",
            f"shard = NamedSharding(Mesh(np.array(jax.devices('cpu')[:{jc.DEVICES}]), ({jc.DEVICE_AXIS!r},)), "
            f"P({jc.DEVICE_AXIS!r}))",
        ]
    shards = jc.shards_of(p)
    jax = sys.modules.get("jax")  # as jax_common._shard_map chooses (the sync path has imported jax)
    smap, check = ("jax.shard_map", "check_vma") if jax is None or hasattr(jax, "shard_map") else (
        "shard_map", "check_rep")
    lines = [
        "from jax.sharding import Mesh, PartitionSpec as P",
        *([] if smap == "jax.shard_map" else ["from jax.experimental.shard_map import shard_map"]),
        f"mesh = Mesh(np.array(jax.devices('cpu')[:{jc.DEVICES}]), ({jc.DEVICE_AXIS!r},))",
        "module_apply = apply",
    ]
    if len(set(shards)) == 1:
        return lines + [
            "def apply(params, state, x, train):  # the batch split over the devices, parameters and state replicated",
            f"    f = {smap}(lambda prm, st, x: module_apply(prm, st, x, train), mesh=mesh,",
            f"        in_specs=(P(), P(), P({jc.DEVICE_AXIS!r})), out_specs=(P({jc.DEVICE_AXIS!r}), P()), {check}=False)",
            "    return f(params, state, x)",
        ]
    return lines + [
        f"shards = {shards!r}  # per-device rows: each shard padded to the largest, the padding masked out",
        "rows, starts = max(shards), np.cumsum((0,) + shards[:-1])",
        "def apply(params, state, x, train):",
        "    pad = [((0, rows - n),) + ((0, 0),) * (x.ndim - 1) for n in shards]",
        "    padded = jnp.concatenate([jnp.pad(x[a:a + n], w) for a, n, w in zip(starts, shards, pad)])",
        "    mask = np.concatenate([np.arange(rows) < n for n in shards]).reshape((-1,) + (1,) * (x.ndim - 1))",
        f"    f = {smap}(lambda prm, st, x, m: module_apply(prm, st, x, train, mask=m), mesh=mesh,",
        f"        in_specs=(P(), P(), P({jc.DEVICE_AXIS!r}), P({jc.DEVICE_AXIS!r})),"
        f" out_specs=(P({jc.DEVICE_AXIS!r}), P()), {check}=False)",
        "    y, state = f(params, state, padded, jnp.asarray(mask))",
        "    return jnp.concatenate([y[d * rows:d * rows + n] for d, n in enumerate(shards)]), state",
    ]
