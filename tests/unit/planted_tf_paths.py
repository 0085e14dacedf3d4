"""Deliberately broken TensorFlow/Keras execution paths: tf.nn.moments + tf.nn.batch_normalization (fast: no XLA,
no converter, no Keras model) whose eager path is right and whose path of one kind (graph/xla, frozen, mixed
precision, fit, tflite) computes what a broken implementation of that path would.
"""
from __future__ import annotations

from adapters import tf_paths as tfp
from adapters.base import EAGER_PATH, PathSpec, Precision
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
                      PathSpec("fit", "fit"), PathSpec("tflite", "tflite"),
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
            if path == "sync":  # right: the global batch's statistics are the eager step's
                return _no_gradients(self.run_on(p, "eager"))
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
        if self.bug == "tflite_eps_dropped":
            return self.run_on(p.with_(eps=0.0), "eager")
        if self.bug == "sync_mean_of_device_stats":
            return _device_averaged(p)
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
