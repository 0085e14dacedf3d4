"""paddle.nn.BatchNorm{1,2,3}D (optional extra `paddle`): the layer, its _mean/_variance, paddle.grad."""
from __future__ import annotations

import numpy as np

from reference import QUANTITIES, Convention, Problem

from .base import Adapter, Observation

# paddle/nn/layer/norm.py (_BatchNormBase): momentum=0.9 is the weight on the OLD value, epsilon=1e-5,
# parameters and running statistics in the default dtype (float32 when it is float16), layer.train()/eval()
# choose batch or global statistics (paddle/nn/functional/norm.py, batch_norm: use_global_stats = not
# training). The CPU kernel (paddle/phi/kernels/cpu/batch_norm_kernel.cc) computes the batch mean, then the
# mean of squared deviations (two-pass, biased), and the running variance from that biased variance.
SOURCE = "paddle/nn/layer/norm.py (_BatchNormBase), paddle/nn/functional/norm.py, paddle/phi/kernels/cpu/batch_norm_kernel.cc"
_CLASS = {2: "BatchNorm1D", 3: "BatchNorm1D", 4: "BatchNorm2D", 5: "BatchNorm3D"}
_FORMAT = {2: "NCL", 3: "NCL", 4: "NCHW", 5: "NCDHW"}


class PaddleBatchNorm(Adapter):
    name = "paddle"
    framework = "paddlepaddle"
    api = "paddle.nn.BatchNorm{1,2,3}D"
    convention = Convention(momentum_form="weight_on_old", default_momentum=0.9, default_eps=1e-5,
                            running_var="biased", averaging="ema", variance="two_pass")
    dtypes = frozenset({"float64", "float32"})  # no float16/bfloat16 batch_norm kernel on CPU (NotFound)
    channel_axes = "first"
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var", "num_batches_tracked"}
    source = SOURCE

    def setup(self) -> None:
        import paddle

        paddle.set_device("cpu")
        self.paddle = paddle
        self.device = "cpu"

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "paddle BatchNorm has no cumulative average"
        if problem.memory_format != "contiguous":
            return "the case's memory format is torch's; paddle takes data_format instead"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        cfg: dict[str, object] = {"num_features": problem.channels}
        if not problem.use_defaults:
            cfg["momentum"] = self.native_momentum(problem)
            cfg["epsilon"] = problem.eps
        if not problem.affine:
            cfg["weight_attr"] = cfg["bias_attr"] = False
        cfg["data_format"] = _FORMAT[len(problem.shape)]
        return cfg

    def run(self, p: Problem) -> Observation:
        paddle = self.paddle
        default = paddle.get_default_dtype()
        paddle.set_default_dtype(p.dtype)  # parameters and running statistics in the case dtype
        try:
            layer = getattr(paddle.nn, _CLASS[len(p.shape)])(**self.native_config(p))
        finally:
            paddle.set_default_dtype(default)
        with paddle.no_grad():
            pairs = [(layer._mean, p.running_mean), (layer._variance, p.running_var)]
            for t, v in pairs + ([(layer.weight, p.gamma), (layer.bias, p.beta)] if p.affine else []):
                t.set_value(paddle.to_tensor(np.array(v), dtype=t.dtype))
        obs = Observation(facts={"device": "cpu", "layer": _CLASS[len(p.shape)]})
        ys, means, vars_ = [], [], []
        grads = self.wants_gradients(p)
        to = lambda a, last=False: paddle.to_tensor(np.array(a), dtype=p.dtype, stop_gradient=not last)  # noqa
        for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
            train = mode == "train" or not p.track_running_stats
            layer.train() if train else layer.eval()
            # eval with a gradient: paddle requires use_global_stats=True ("is_test = True CANNOT be used in
            # train program"); the constructor argument, set per step
            layer._use_global_stats = None if train else True
            xt = to(x, grads and k == p.steps - 1)
            y = layer(xt)
            ys.append(y)
            means.append(layer._mean.clone())
            vars_.append(layer._variance.clone())
        f64 = lambda t: t.astype("float64").numpy()  # noqa: E731
        obs.put("y", np.stack([f64(y) for y in ys]), _name(ys[0]))
        if p.track_running_stats:
            obs.put("running_mean", np.stack([f64(m) for m in means]), _name(means[0]))
            obs.put("running_var", np.stack([f64(v) for v in vars_]), _name(vars_[0]))
        if grads:
            params = [layer.weight, layer.bias] if p.affine else []
            second = self.wants_second_order(p)
            g = paddle.grad([ys[-1]], [xt] + params, grad_outputs=[to(p.dy)], create_graph=second)
            for q, t in zip(("dx", "dgamma", "dbeta"), g):
                obs.put(q, f64(t), _name(t))
            if second:
                try:
                    g2 = paddle.grad([g[0]], [xt] + params[:1], grad_outputs=[to(p.v)], allow_unused=True)
                except ValueError as e:  # reported, not hidden: the reason carries paddle's message
                    for q in ("d2x", "d2gamma"):
                        obs.unsupported[q] = f"paddle's batch_norm double backward raised: {str(e).splitlines()[0]}"
                else:
                    obs.put("d2x", _or_zeros(g2[0], xt), _name(xt))
                    if p.affine:
                        obs.put("d2gamma", _or_zeros(g2[1], layer.weight), _name(layer.weight))
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "paddle BatchNorm does not return the batch statistics"
        obs.unsupported["num_batches_tracked"] = "paddle BatchNorm keeps no step counter"
        return obs


def _name(t) -> str:
    return str(t.dtype).replace("paddle.", "")


def _or_zeros(t, like):
    return np.zeros(like.shape) if t is None else t.astype("float64").numpy()
