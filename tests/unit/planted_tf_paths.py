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
                      PathSpec("fit", "fit"), PathSpec("tflite", "tflite"))

    def path_unsupported(self, p, path):
        if path in ("mixed-bf16", "tflite"):
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
        raise AssertionError(self.bug)
