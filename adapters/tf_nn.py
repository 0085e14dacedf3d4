"""tf.nn.moments + tf.nn.batch_normalization, composed as users write them, running statistics by hand.

Read in tensorflow/python/ops/nn_impl.py (TF 2.21):
  - `moments`: mean = reduce_mean(y), variance = reduce_mean(squared_difference(y, stop_gradient(mean))):
    two-pass, biased ("sample variance, not unbiased variance"); float16 input is cast to float32 for both
    reductions and the results cast back to float16; bfloat16 is NOT cast (its reduce_mean accumulates in
    float32 inside the kernel, but the mean is rounded to bfloat16 and every squared difference is a
    bfloat16 product);
  - `batch_normalization`: inv = rsqrt(variance + variance_epsilon); inv *= scale;
    y = x * inv + (offset - mean * inv), all in the input dtype; `variance_epsilon` has no default.
The running statistics are the caller's: updated here as R <- (1 - a) R + a B with B the (biased) moments
and a = the canonical weight on the new statistic (a = 1/t for the cumulative average), in the case dtype.
Gradients by tf.GradientTape through moments and normalization (the statistics are constants in inference).
"""
from __future__ import annotations

from reference import QUANTITIES, Convention, Problem, reduce_axes

from . import tf_common as tfc
from . import tf_paths as tfp
from .base import EAGER_PATH, Adapter, Observation, Precision

SOURCE = "tensorflow/python/ops/nn_impl.py (moments, batch_normalization)"


class TFNN(Adapter):
    name = "tf.nn.batch_normalization"
    framework = "tensorflow"
    api = "tf.nn.moments + tf.nn.batch_normalization"
    # Stateless: no native momentum or eps default exists (variance_epsilon is a required argument, the
    # running statistics are the caller's), so use_defaults cases are unsupported and the oracle never reads
    # these two; None says "none". (NaN would not survive repr() into the repro snippets.)
    convention = Convention(momentum_form="weight_on_new", default_momentum=None, default_eps=None,
                            running_var="biased", batch_var_estimator="biased", averaging="ema",
                            variance="two_pass")
    channel_axes = "any"
    conventional_layout = "channels_last"  # tf.nn.conv2d data_format="NHWC" by default
    quantities = frozenset(QUANTITIES) - {"num_batches_tracked"}
    single_element_training = "computes"  # moments of one element: variance 0, y = beta
    source = SOURCE
    subnormals = tfc.SUBNORMALS

    def versions(self):
        return {self.framework: tfc.version()}

    def precision(self, problem: Problem) -> Precision:
        dt = problem.dtype
        # Everything in the case dtype. float16: moments are float32 (nn_impl.moments casts) but the
        # normalization, the running update and the gradient reductions (reduce_sum accumulates float16 in
        # float16) are float16 arithmetic; bfloat16: all but the kernels' reduction accumulators is bfloat16.
        # One `compute` format cannot say "float32 sums, 16-bit elementwise": the bound takes the coarser.
        return Precision(io=dt, compute=dt, stats=dt, params=dt)

    def setup(self) -> None:
        self.tf = tfc.import_tf()

    def unsupported(self, problem: Problem) -> str | None:
        if problem.use_defaults:
            return ("tf.nn.batch_normalization has no defaults: variance_epsilon is a required argument and "
                    "the running statistics (and their momentum) are the caller's")
        return tfc.no_memory_format(problem) or super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        """What the caller passes: the reduction axes, variance_epsilon, and the weight its own running-
        statistics update puts on the new batch statistic (None: 1/t, the cumulative average)."""
        return {"axes": list(reduce_axes(len(problem.shape), problem.axis)), "variance_epsilon": problem.eps,
                "new_weight": problem.momentum}

    def run(self, p: Problem) -> Observation:
        return self.run_on(p, "eager")

    # -- execution paths (adapters/tf_paths.py): graph and xla run the same step in a tf.function
    paths = (EAGER_PATH, tfp.GRAPH, tfp.XLA)

    def run_path(self, p: Problem, path: str) -> Observation:
        return self.run_on(p, path)

    def run_on(self, p: Problem, path: str) -> Observation:
        tf = self.tf
        dt = tf.as_dtype(p.dtype)
        cfg = self.native_config(p)
        axes, eps, a = cfg["axes"], cfg["variance_epsilon"], cfg["new_weight"]
        bshape = [1] * len(p.shape)
        bshape[p.axis] = p.channels
        c = lambda v: tf.reshape(tfc.constant(tf, v, dt), bshape)  # noqa: E731
        gamma, beta = (c(p.gamma), c(p.beta)) if p.affine else (None, None)
        st = {"rm": c(p.running_mean), "rv": c(p.running_var), "t": 0}
        obs = Observation(facts={"device": "cpu"} if path == "eager" else {"device": "cpu", "function": path})
        ys, means, vars_, bms, bvs = [], [], [], [], []
        track = p.track_running_stats

        def pure(x, g, b, rm, rv, w, train):
            """One step, side-effect free: (y, new rm, new rv, mean, var); w the weight on the new statistic."""
            if train or not track:
                mean, var = tf.nn.moments(x, axes, keepdims=True)
                if train and track:
                    rm = (1 - w) * rm + w * mean
                    rv = (1 - w) * rv + w * var
            else:
                mean, var = rm, rv
            return tf.nn.batch_normalization(x, mean, var, b, g, eps), rm, rv, mean, var

        def step(x, mode, g=None, b=None):
            train = mode == "train"
            w = 0.0
            if train and track:
                st["t"] += 1
                w = a if a is not None else 1.0 / st["t"]
            fn = tfp.cached_function(self, (p.shape, p.dtype, p.axis, eps, track, p.affine, train, w), pure, path)
            y, st["rm"], st["rv"], mean, var = fn(x, g, b, st["rm"], st["rv"], w, train)
            if train:
                bms.append(tf.reshape(mean, [-1]))
                bvs.append(tf.reshape(var, [-1]))
            return y

        params = [gamma, beta] if p.affine else []
        for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
            xt = tfc.constant(tf, x, dt)
            if k == p.steps - 1 and self.wants_gradients(p):
                fwd = lambda xx, *ps, m=mode: step(xx, m, *ps)  # noqa: E731
                y = tfc.with_gradients(tf, obs, fwd, xt, params, tfc.constant(tf, p.dy, dt),
                                       tfc.constant(tf, p.v, dt), self.wants_second_order(p))
            else:
                y = step(xt, mode, *params)
            ys.append(y)
            means.append(tf.reshape(st["rm"], [-1]))
            vars_.append(tf.reshape(st["rv"], [-1]))
        tfc.put(obs, "y", ys)
        if p.track_running_stats:
            tfc.put(obs, "running_mean", means)
            tfc.put(obs, "running_var", vars_)
        if bms:
            tfc.put(obs, "batch_mean", bms)
            tfc.put(obs, "batch_var", bvs)
        obs.unsupported["num_batches_tracked"] = "tf.nn keeps no step counter"
        return obs

    def path_snippet(self, p: Problem, path: str) -> str:
        return self.snippet(p, path)

    def snippet(self, p: Problem, path: str = "eager") -> str:
        """The steps as run_on runs them: one side-effect-free step function, called directly (eager) or as a
        tf.function (graph; xla: jit_compile=True)."""
        cfg = self.native_config(p)
        bshape = [1] * len(p.shape)
        bshape[p.axis] = p.channels
        head = [
            f"dt, axes, eps = tf.{p.dtype}, {cfg['axes']!r}, {cfg['variance_epsilon']!r}",
            f"a = {cfg['new_weight']!r}  # weight of the new batch statistic (None: 1/t)",
            "c = lambda v, d=dt: tf.cast(tf.constant(np.array(v)), d)",
            f"b = lambda v: tf.reshape(c(v), {bshape!r})",
            "gamma, beta = " + ("b(p.gamma), b(p.beta)" if p.affine else "None, None"),
            f"rm, rv, t, track = b(p.running_mean), b(p.running_var), 0, {p.track_running_stats!r}",
            "def pure(x, g, b, rm, rv, w, train):  # one step: y, new rm, new rv, mean, var",
            "    if train or not track:",
            "        mean, var = tf.nn.moments(x, axes, keepdims=True)",
            "        if train and track:",
            "            rm, rv = (1 - w) * rm + w * mean, (1 - w) * rv + w * var",
            "    else:",
            "        mean, var = rm, rv",
            "    return tf.nn.batch_normalization(x, mean, var, b, g, eps), rm, rv, mean, var",
            "fn = " + ("pure" if path not in ("graph", "xla") else
                       f"tf.function(pure, jit_compile={path == 'xla'!r}, reduce_retracing=False)  # the path"),
        ]
        step = [
            "train, w = mode == 'train', 0.0",
            "if train and track:",
            "    t += 1; w = a if a is not None else 1.0 / t",
            "y, rm, rv, mean, var = fn(xt, gamma, beta, rm, rv, w, train)",
            "rec = {'y': y, **({'running_mean': tf.reshape(rm, [-1]), 'running_var': tf.reshape(rv, [-1])}"
            " if track else {})}",
            "if train:",
            "    rec.update(batch_mean=tf.reshape(mean, [-1]), batch_var=tf.reshape(var, [-1]))",
        ]
        return tfc.snippet_program(head, step, "[gamma, beta]" if p.affine else "[]", self.wants_gradients(p),
                                   self.wants_second_order(p))

    def bench(self, shape, dtype, what):
        """moments + batch_normalization on NHWC (TensorFlow's CPU layout) as one tf.function; the running
        update is the caller's, returned as new tensors (the same arithmetic as run())."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "last")
        tf = self.tf
        dt = tf.as_dtype(p.dtype)
        cfg = self.native_config(p)
        axes, eps, a = cfg["axes"], cfg["variance_epsilon"], cfg["new_weight"]
        bshape = [1] * len(p.shape)
        bshape[p.axis] = p.channels
        c = lambda v: tf.reshape(tfc.constant(tf, v, dt), bshape)  # noqa: E731
        gamma, beta, rm, rv = c(p.gamma), c(p.beta), c(p.running_mean), c(p.running_var)
        x = tfc.constant(tf, p.xs[0], dt)

        def train(x, g, b):
            mean, var = tf.nn.moments(x, axes, keepdims=True)
            y = tf.nn.batch_normalization(x, mean, var, b, g, eps)
            return y, (1 - a) * rm + a * mean, (1 - a) * rv + a * var
        if what == "eval":
            fn = bs.tf_call(tf, lambda x, g, b: (tf.nn.batch_normalization(x, rm, rv, b, g, eps),), x, gamma, beta)
        elif what == "train":
            fn = bs.tf_call(tf, train, x, gamma, beta)
        else:
            def forward_backward(x, g, b, dy):
                with tf.GradientTape() as tape:
                    tape.watch([x, g, b])
                    y, new_rm, new_rv = train(x, g, b)
                return (y, *tape.gradient(y, [x, g, b], output_gradients=dy), new_rm, new_rv)
            fn = bs.tf_call(tf, forward_backward, x, gamma, beta, tfc.constant(tf, p.dy, dt))
        return bs.make(fn, p, layout, what)
