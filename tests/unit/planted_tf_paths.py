"""Deliberately broken TensorFlow/Keras execution paths: tf.nn.moments + tf.nn.batch_normalization (fast: no XLA,
no converter, no Keras model) whose eager path is right and whose path of one kind (graph/xla, frozen, mixed
precision, fit, tflite) computes what a broken implementation of that path would.
"""
from __future__ import annotations

from adapters import tf_paths as tfp
from adapters.base import EAGER_PATH, PathSpec
from adapters.tf_nn import TFNN

# bug -> (path, what the broken path does)
TF_PATH_BUGS = {
    "xla_wrong_eps": ("xla", "a compiled step that baked in eps 1e-3 (Keras' default) instead of the layer's eps"),
    "graph_momentum_flipped": ("graph", "a graph rewrite that reads momentum as the weight on the OLD value"),
    "frozen_still_trains": ("frozen", "a frozen (trainable=False) layer that still normalizes with the batch "
                                      "statistics and updates them when called with training=True (Keras 1 did)"),
    "mixed_stats_in_bf16": ("mixed-bf16", "the mixed policy keeps the running statistics and parameters in "
                                          "bfloat16 instead of float32 (and normalizes in bfloat16)"),
    "fit_updates_twice": ("fit", "a training step that calls the layer twice (loss and a metric), so the moving "
                                 "statistics take two EMA steps per batch"),
    "tflite_eps_dropped": ("tflite", "a converter that folds BatchNorm with eps left out of the square root"),
    "sync_mean_of_device_stats": ("sync", "synchronized BatchNorm that averages the devices' means and variances "
                                          "(unweighted, no between-device spread) instead of taking the global "
                                          "batch's statistics"),
    "fit_jit_state_not_written_back": ("fit-jit", "a jit-compiled train step that computes the new moving "
                                                  "statistics but never writes them back into the layer (the "
                                                  "functional state not threaded out of the compiled step)"),
    "no_jit_default_eps": ("no-jit", "an op-by-op (un-jitted) step that normalizes with the layer's default eps "
                                     "(1e-3) instead of the configured one"),
    "sync_backward_local_sums": ("sync", "synchronized BatchNorm whose forward is right but whose backward uses "
                                         "each device's own sums of dy and dy*xhat (the gradient of the "
                                         "all-reduce passes only the local part instead of all-reducing it)"),
    "sync_param_grads_one_replica": ("sync", "a distributed step that applies the first replica's dgamma/dbeta "
                                             "instead of the sum over replicas (gradients not aggregated)"),
    "sync_param_grads_reduced_twice": ("sync", "dgamma/dbeta all-reduced inside synchronized BatchNorm's backward "
                                               "and again by the distributed optimizer: the number of devices "
                                               "times too large (nnabla fixed this: sony/nnabla#1120)"),
}


class PlantedTFPath(TFNN):
    """tf.nn BatchNorm with one broken execution path (the other declared paths run the eager code)."""

    def __init__(self, bug: str):
        assert bug in TF_PATH_BUGS, bug
        self.bug = bug
        self.broken = TF_PATH_BUGS[bug][0]
        self.name = f"planted.tfpath.{bug}"
        frozen = PathSpec("frozen", "trainable=False under training=True", convention=self.convention.with_(frozen=True))
        self.paths = (EAGER_PATH, tfp.GRAPH, tfp.XLA, frozen, PathSpec("mixed-bf16", "mixed_bfloat16"),
                      PathSpec("fit", "fit"), PathSpec("fit-jit", "fit, jit_compile=True"),
                      PathSpec("no-jit", "op by op"), PathSpec("tflite", "tflite"),
                      PathSpec("sync", "synchronized over 2 devices", sharded=True))

    def path_unsupported(self, p, path):
        if path in ("mixed-bf16", "tflite", "sync"):
            return tfp.unsupported(p, path)
        if path == "frozen" and not p.track_running_stats:
            return "a Keras layer always keeps running statistics"
        return None

    def path_precision(self, p, path):
        return tfp.mixed_precision(p) if path == "mixed-bf16" else self.precision(p)

    def path_expected_dtype(self, quantity, p, path):
        if path == "mixed-bf16" and self.bug != "mixed_stats_in_bf16":
            return super().path_expected_dtype(quantity, p, path)
        return self.expected_dtype(quantity, p)  # the broken mixed path returns what it computes in

    def run_path(self, p, path):
        if path != self.broken:
            if path == "sync":  # right: the global batch's statistics and gradients are the eager step's
                return self.run_on(p, "eager")
            if path == "frozen":  # right: inference on every step
                obs = self.run_on(p.with_(modes=("eval",) * p.steps), "eager")
                obs.unsupported.update(batch_mean="none exposed", batch_var="none exposed")
                return obs
            return self.run_on(p, "graph" if path in ("graph", "xla") else "eager")
        if self.bug == "xla_wrong_eps":
            return self.run_on(p.with_(eps=1e-3), "eager")
        if self.bug == "graph_momentum_flipped":
            flipped = None if p.momentum is None else 1.0 - p.momentum
            return self.run_on(p.with_(momentum=flipped), "eager")
        if self.bug == "frozen_still_trains":
            obs = self.run_on(p, "eager")
            for q in ("batch_mean", "batch_var"):  # a Keras layer exposes none
                obs.values.pop(q, None)
                obs.unsupported[q] = "Keras BatchNormalization does not expose the batch statistics"
            return obs
        if self.bug == "mixed_stats_in_bf16":
            return self.run_on(p, "eager")  # tf.nn on bfloat16: statistics, parameters and arithmetic in bfloat16
        if self.bug == "fit_updates_twice":
            a = p.momentum
            twice = None if a is None else 1.0 - (1.0 - a) ** 2
            return self.run_on(p.with_(momentum=twice), "eager")
        if self.bug == "fit_jit_state_not_written_back":
            return self.run_on(p.with_(momentum=0.0), "eager")  # weight 0 on the new statistic: R never moves
        if self.bug == "no_jit_default_eps":
            return self.run_on(p.with_(eps=1e-3), "eager")
        if self.bug == "tflite_eps_dropped":
            return self.run_on(p.with_(eps=0.0), "eager")
        if self.bug == "sync_mean_of_device_stats":
            return _device_averaged(p)
        if self.bug == "sync_backward_local_sums":
            return _local_backward(p, self.run_on(p, "eager"))
        if self.bug == "sync_param_grads_reduced_twice":
            obs = self.run_on(p, "eager")
            for q in ("dgamma", "dbeta", "d2gamma"):
                if q in obs.values:
                    obs.put(q, 2 * obs.values[q], obs.dtypes[q])  # two devices: exact in every format
            return obs
        if self.bug == "sync_param_grads_one_replica":
            return _first_replica_parameter_gradients(p, self.run_on(p, "eager"))
        raise AssertionError(self.bug)


def _no_gradients(obs):
    from reference import GRADIENTS

    for q in GRADIENTS:
        obs.values.pop(q, None)
        obs.unsupported[q] = "not observed on the sync path"
    return obs


def _device_averaged(p):
    """Each device's batch statistics, averaged with equal weights, stand for the global batch's."""
    import numpy as np

    from adapters.base import Observation
    from reference import reduce_axes

    n_dev = len(p.shards) or 2
    shards = tuple(p.shards) or (p.shape[0] // n_dev,) * n_dev
    cuts = np.cumsum(shards)[:-1]
    axes = reduce_axes(len(p.shape), p.axis)
    view = [1] * len(p.shape)
    view[p.axis] = p.channels
    rm, rv, a = p.running_mean.copy(), p.running_var.copy(), p.momentum
    ys, means, vars_, bms, bvs = [], [], [], [], []
    for x, mode in zip(p.xs, p.modes):
        if mode == "train":
            parts = np.split(x, cuts, axis=0)
            mean = np.mean([part.mean(axis=axes) for part in parts], axis=0)
            var = np.mean([part.var(axis=axes) for part in parts], axis=0)
            rm, rv = (1 - a) * rm + a * mean, (1 - a) * rv + a * var
            bms.append(mean)
            bvs.append(var)
        else:
            mean, var = rm, rv
        y = (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + p.eps)
        ys.append(y * p.gamma_or_ones().reshape(view) + p.beta_or_zeros().reshape(view))
        means.append(rm)
        vars_.append(rv)
    rnd = lambda a: np.asarray(np.asarray(a, dtype=np.float64).astype(p.dtype), dtype=np.float64)  # noqa: E731
    obs = Observation(facts={"shards": "+".join(map(str, shards))})
    obs.put("y", rnd(np.stack(ys)), p.dtype)
    obs.put("running_mean", rnd(np.stack(means)), p.dtype)
    obs.put("running_var", rnd(np.stack(vars_)), p.dtype)
    obs.put("batch_mean", rnd(np.stack(bms)), p.dtype)
    obs.put("batch_var", rnd(np.stack(bvs)), p.dtype)
    obs.unsupported["num_batches_tracked"] = "none"
    return _no_gradients(obs)


def _shards(p):
    import numpy as np

    shards = tuple(p.shards) or (p.shape[0] // 2,) * 2
    return np.cumsum(shards)[:-1]


def _last_step_xhat(p):
    """The last (training) step's normalized input and 1/sqrt(var + eps), from the global batch."""
    import numpy as np

    from reference import reduce_axes

    x, axes = p.xs[-1], reduce_axes(len(p.shape), p.axis)
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    r = 1.0 / np.sqrt(var + p.eps)
    return (x - mean) * r, r, axes


def _local_backward(p, obs):
    """dx of a training step whose backward reduces dy and dy*xhat over each device's shard only (divided by
    the global count, as a backward that forgot to all-reduce them does); the rest is right."""
    import numpy as np

    if p.modes[-1] != "train" or "dx" not in obs.values:
        return obs
    xhat, r, axes = _last_step_xhat(p)
    n = xhat.size // p.channels
    view = [1] * len(p.shape)
    view[p.axis] = p.channels
    gamma = p.gamma_or_ones().reshape(view)
    parts = []
    for dy, xh in zip(np.split(p.dy, _shards(p), axis=0), np.split(xhat, _shards(p), axis=0)):
        s1, s2 = dy.sum(axis=axes, keepdims=True), (dy * xh).sum(axis=axes, keepdims=True)
        parts.append(gamma * r * (dy - s1 / n - xh * s2 / n))
    dx = np.concatenate(parts, axis=0)
    obs.put("dx", _rounded(dx, obs.dtypes["dx"]), obs.dtypes["dx"])
    obs.values.pop("d2x", None)
    obs.unsupported["d2x"] = "not observed by this planted bug"
    return obs


def _first_replica_parameter_gradients(p, obs):
    """dgamma/dbeta of a training step taken from the first device's shard only (an update that applies one
    replica's gradients instead of their sum); the rest is right."""
    if p.modes[-1] != "train" or "dgamma" not in obs.values:
        return obs
    xhat, _, axes = _last_step_xhat(p)
    cut = _shards(p)[0]
    dy, xh = p.dy[:cut], xhat[:cut]
    obs.put("dgamma", _rounded((dy * xh).sum(axis=axes), obs.dtypes["dgamma"]), obs.dtypes["dgamma"])
    obs.put("dbeta", _rounded(dy.sum(axis=axes), obs.dtypes["dbeta"]), obs.dtypes["dbeta"])
    obs.values.pop("d2gamma", None)
    obs.unsupported["d2gamma"] = "not observed by this planted bug"
    return obs


def _rounded(a, dtype: str):
    """`a` rounded to `dtype` as the framework would return it (numpy has no bfloat16: left in float64)."""
    import numpy as np

    return np.asarray(a if dtype == "bfloat16" else np.asarray(a).astype(dtype), dtype=np.float64)
