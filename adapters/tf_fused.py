"""tf.raw_ops.FusedBatchNormV3, called as a user calls the raw op, the running statistics kept by the caller.

Read in tensorflow/core/kernels/fused_batch_norm_op.cc (Eigen CPU kernel) and mkl/mkl_fused_batch_norm_op.cc
(the oneDNN kernel eager CPU ops are rewritten to when oneDNN is on, TF's x86 default; both checked):
  - T (x, y) in {half, bfloat16, float}; U (scale, offset, mean, variance) float: reductions and normalization
    run in float32, y is cast back to T; input must be 4-D or 5-D (NHWC default, NCHW, NDHWC, NCDHW);
  - training: two-pass biased batch statistics; y = (x - mean) * (rsqrt(var + epsilon) * scale) + offset;
  - outputs 1, 2 (`batch_mean`, `batch_variance`) are the RUNNING statistics (1 - f) R + f B with
    f = exponential_avg_factor (weight on the new statistic) and B's variance Bessel-corrected, n/(n-1);
    f = 1 (the default) returns the batch statistics, variance Bessel-corrected. reserve_space_1/2 hold the
    batch mean and the biased batch variance on CPU (cuDNN keeps the inverse std there instead);
  - attrs epsilon (default 1e-4) and exponential_avg_factor (default 1.0) are 32-bit floats;
  - gradients: FusedBatchNormGradV3 (statistics constant in inference); second order by
    tensorflow/python/ops/nn_fused_batch_norm_grad.py.
Not assumed: what the op does with float64 is left to the op (run() reports its refusal per quantity).
"""
from __future__ import annotations

from reference import QUANTITIES, Convention, Problem

from . import tf_common as tfc
from . import tf_paths as tfp
from .base import EAGER_PATH, Adapter, Observation, Precision

SOURCE = ("tensorflow/core/kernels/fused_batch_norm_op.cc, "
          "tensorflow/core/kernels/mkl/mkl_fused_batch_norm_op.cc, "
          "tensorflow/python/ops/gen_nn_ops.py (defaults), nn_grad.py, nn_fused_batch_norm_grad.py")
_FORMAT = {(4, 1): "NCHW", (4, 3): "NHWC", (5, 1): "NCDHW", (5, 4): "NDHWC"}


class TFFused(Adapter):
    name = "tf.raw_ops.FusedBatchNormV3"
    framework = "tensorflow"
    api = "tf.raw_ops.FusedBatchNormV3"
    convention = Convention(momentum_form="weight_on_new", default_momentum=1.0, default_eps=1e-4,
                            running_var="unbiased", batch_var_estimator="biased", averaging="ema",
                            variance="two_pass")
    channel_axes = "any"  # axis 1 or last of 4-D / 5-D input; see unsupported()
    conventional_layout = "channels_last"  # FusedBatchNormV3 data_format="NHWC" by default
    quantities = frozenset(QUANTITIES) - {"num_batches_tracked"}
    single_element_training = "computes"  # cannot arise (4-D/5-D only); the kernels guard n - 1 = 0
    source = SOURCE
    subnormals = tfc.SUBNORMALS

    def versions(self):
        return {self.framework: tfc.version()}

    def precision(self, problem: Problem) -> Precision:
        dt = problem.dtype
        if dt == "float64":  # no kernel is registered for it (see run()); kept uniform for completeness
            return Precision.uniform(dt)
        return Precision(io=dt, compute="float32", stats="float32", params="float32")

    def expected_dtype(self, quantity: str, problem: Problem) -> str:
        if quantity in ("batch_mean", "batch_var"):  # reserve_space_1/2 are U tensors
            return self.precision(problem).stats
        return super().expected_dtype(quantity, problem)

    def setup(self) -> None:
        self.tf = tfc.import_tf()

    def unsupported(self, problem: Problem) -> str | None:
        if len(problem.shape) not in (4, 5):
            return "FusedBatchNormV3 takes 4-D or 5-D input only (\"input must be 4 or 5-dimensional\")"
        if (len(problem.shape), problem.axis) not in _FORMAT:
            return "FusedBatchNormV3's data_format puts channels on axis 1 (NCHW/NCDHW) or last (NHWC/NDHWC)"
        return tfc.no_memory_format(problem) or super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        """Attributes of the training calls. exponential_avg_factor = alpha (weight on new); the cumulative
        average (momentum None) passes 1/t at training step t, reported here as None."""
        cfg: dict[str, object] = {"data_format": _FORMAT.get((len(problem.shape), problem.axis))}
        if not problem.use_defaults:
            cfg["epsilon"] = problem.eps
            cfg["exponential_avg_factor"] = self.native_momentum(problem)
        return cfg

    def run(self, p: Problem) -> Observation:
        return self.run_on(p, "eager")

    # -- execution paths (adapters/tf_paths.py): graph and xla run the op in a tf.function
    paths = (EAGER_PATH, tfp.GRAPH, tfp.XLA)

    def run_path(self, p: Problem, path: str) -> Observation:
        obs = self.run_on(p, path)
        obs.facts["function"] = path
        return obs

    def path_snippet(self, p: Problem, path: str) -> str:
        return self.snippet(p, path)

    def path_expected_dtype(self, quantity: str, problem: Problem, path: str) -> str:
        return self.expected_dtype(quantity, problem)  # the same op on every path

    def run_on(self, p: Problem, path: str) -> Observation:
        tf, track = self.tf, p.track_running_stats
        dt, u = tf.as_dtype(p.dtype), tf.float32  # U = float32, the only parameter type the op registers
        cfg = self.native_config(p)
        base = {k: v for k, v in cfg.items() if k != "exponential_avg_factor"}
        const = lambda a, d=u: tfc.constant(tf, a, d)  # noqa: E731
        gamma, beta, empty = const(p.gamma_or_ones()), const(p.beta_or_zeros()), tf.constant([], u)
        st = {"rm": const(p.running_mean), "rv": const(p.running_var), "t": 0}
        obs = Observation(facts={"device": "cpu", "data_format": cfg["data_format"], "onednn": tfc.onednn()})
        ys, means, vars_, bms, bvs = [], [], [], [], []

        def step(x, mode, g, b):
            train, kw = mode == "train", dict(base)
            if train and track:
                st["t"] += 1
                if "exponential_avg_factor" in cfg:  # use_defaults passes none: the op's default 1.0
                    f = cfg["exponential_avg_factor"]
                    kw["exponential_avg_factor"] = 1.0 / st["t"] if f is None else f
            m, v = (st["rm"], st["rv"]) if track else (empty, empty)
            # no running statistics: every step normalizes with the batch statistics (factor 1)
            key = (p.shape, p.dtype, train or not track, tuple(sorted(kw.items())))
            op = tfp.cached_function(self, key, _fused, path)
            out = op(x=x, scale=g, offset=b, mean=m, variance=v, is_training=train or not track, **kw)
            if train:
                bms.append(out.reserve_space_1)
                bvs.append(out.reserve_space_2)
                if track:
                    st["rm"], st["rv"] = out.batch_mean, out.batch_variance
            return out.y

        params = [gamma, beta] if p.affine else []
        try:
            for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
                xt = const(x, dt)
                if k == p.steps - 1 and self.wants_gradients(p):
                    fwd = lambda xx, *ps, m=mode: step(xx, m, *(ps or (gamma, beta)))  # noqa: E731
                    y = tfc.with_gradients(tf, obs, fwd, xt, params, const(p.dy, dt), const(p.v, dt),
                                           self.wants_second_order(p))
                else:
                    y = step(xt, mode, gamma, beta)
                ys.append(y)
                means.append(st["rm"])
                vars_.append(st["rv"])
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:  # discovered, not assumed: the
            # op's own refusal (eager: InvalidArgumentError; while tracing a tf.function: TypeError/ValueError)
            if "attr 'T'" not in str(e) and "not in list of allowed values" not in str(e):
                raise
            why = f"FusedBatchNormV3 refused {p.dtype} input: {str(e).splitlines()[0]}"
            obs.unsupported.update({q: why for q in p.quantities})
            return obs
        tfc.put(obs, "y", ys)
        if track:
            tfc.put(obs, "running_mean", means)
            tfc.put(obs, "running_var", vars_)
        if bms:
            tfc.put(obs, "batch_mean", bms)
            tfc.put(obs, "batch_var", bvs)
        obs.unsupported["num_batches_tracked"] = "FusedBatchNormV3 keeps no step counter"
        return obs

    def snippet(self, p: Problem, path: str = "eager") -> str:
        """The steps as run_on runs them: the raw op called directly (eager) or as a tf.function (graph; xla:
        jit_compile=True)."""
        cfg, track = self.native_config(p), p.track_running_stats
        fac = "{}"
        if "exponential_avg_factor" in cfg:
            f = cfg.pop("exponential_avg_factor")
            fac = "{'exponential_avg_factor': %s}" % ("1.0 / t" if f is None else repr(f))
        head = [
            f"dt, u, track, cfg = tf.{p.dtype}, tf.float32, {track!r}, {cfg!r}",
            "c = lambda v, d=u: tf.cast(tf.constant(np.array(v)), d)",
            "gamma, beta, e = c(p.gamma_or_ones()), c(p.beta_or_zeros()), tf.constant([], u)",
            "rm, rv, t = c(p.running_mean), c(p.running_var), 0",
            "op = " + ("tf.raw_ops.FusedBatchNormV3" if path not in ("graph", "xla") else
                       "tf.function(lambda **kw: tf.raw_ops.FusedBatchNormV3(**kw), "
                       f"jit_compile={path == 'xla'!r}, reduce_retracing=False)  # the path"),
        ]
        step = [
            "train = mode == 'train'",
            "t += train and track",
            f"kw = {fac} if train and track else {{}}",
            "out = op(x=xt, scale=gamma, offset=beta, mean=rm if track else e,",
            "    variance=rv if track else e, is_training=train or not track, **cfg, **kw)",
            "y, rm, rv = out.y, *((out.batch_mean, out.batch_variance) if train and track else (rm, rv))",
            "rec = {'y': y, **({'running_mean': rm, 'running_var': rv} if track else {})}",
            "if train:",
            "    rec.update(batch_mean=out.reserve_space_1, batch_var=out.reserve_space_2)",
        ]
        return tfc.snippet_program(head, step, "[gamma, beta]" if p.affine else "[]", self.wants_gradients(p),
                                   self.wants_second_order(p))

    def bench(self, shape, dtype, what):
        """The raw op on NHWC (its default data_format, TensorFlow's CPU layout) in a tf.function, the running
        statistics passed in and returned as the op returns them; gradients by FusedBatchNormGradV3."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "last")
        tf = self.tf
        dt, u = tf.as_dtype(p.dtype), tf.float32
        x, train = tfc.constant(tf, p.xs[0], dt), what != "eval"
        cfg = {k: v for k, v in self.native_config(p).items() if train or k != "exponential_avg_factor"}
        const = lambda a, d=u: tfc.constant(tf, a, d)  # noqa: E731
        gamma, beta, rm, rv = const(p.gamma), const(p.beta), const(p.running_mean), const(p.running_var)

        def forward(x, g, b):
            out = tf.raw_ops.FusedBatchNormV3(x=x, scale=g, offset=b, mean=rm, variance=rv, is_training=train,
                                              **cfg)
            return out.y, out.batch_mean, out.batch_variance
        if what in ("eval", "train"):
            fn = bs.tf_call(tf, forward, x, gamma, beta)
        else:
            def forward_backward(x, g, b, dy):
                with tf.GradientTape() as tape:
                    tape.watch([x, g, b])
                    y, new_rm, new_rv = forward(x, g, b)
                return (y, *tape.gradient(y, [x, g, b], output_gradients=dy), new_rm, new_rv)
            fn = bs.tf_call(tf, forward_backward, x, gamma, beta, const(p.dy, dt))
        return bs.make(fn, p, layout, what)


def _fused(**kw):
    import tensorflow as tf

    return tf.raw_ops.FusedBatchNormV3(**kw)
