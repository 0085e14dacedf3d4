"""ONNX BatchNormalization run by ONNX Runtime's CPU provider: a one-node model built with onnx.helper."""
from __future__ import annotations

import os

import numpy as np

from reference import FIRST_ORDER, QUANTITIES, SECOND_ORDER, Convention, Problem

from .base import EAGER_PATH, Adapter, Observation, PathSpec, Precision

# onnx/defs/nn/defs.cc (BatchNormalization-9/14/15): momentum=0.9 is the weight on the OLD value
# (running = input * momentum + current * (1 - momentum)), epsilon=1e-5, both FLOAT (32-bit) attributes;
# current_var is the population (biased) variance; Y is normalized with the current (batch) statistics in
# training. Opset 14/15: training_mode=1 gives Y, running_mean, running_var. Opset 9 has no attribute: a node
# with more than one output trains and returns Y, mean, var, saved_mean, saved_var ("saved" batch statistics).
# "ReduceMean and ReduceVar use float for float16 inputs" (opset 15 text). ONNX Runtime's CPU kernel
# (onnxruntime/core/providers/cpu/nn/batch_norm.h) is declared to compute exactly this, two-pass.
SOURCE = "onnx/defs/nn/defs.cc (BatchNormalization), onnxruntime/core/providers/cpu/nn/batch_norm.h"
_TYPES = {"float64": "DOUBLE", "float32": "FLOAT", "float16": "FLOAT16"}


class OnnxRuntimeBatchNorm(Adapter):
    framework = "onnxruntime"
    api = "onnx BatchNormalization (ONNX Runtime CPU)"
    convention = Convention(momentum_form="weight_on_old", default_momentum=0.9, default_eps=1e-5,
                            running_var="biased", averaging="ema", variance="two_pass")
    dtypes = frozenset(_TYPES)  # bfloat16: no ORT CPU kernel (NOT_IMPLEMENTED); opset 9 does not allow it
    channel_axes = "first"
    source = SOURCE
    # eager: the session as users create it (SessionOptions() defaults to ORT_ENABLE_ALL graph optimizations).
    paths = (
        EAGER_PATH,
        PathSpec("opt-disabled", "the same model with graph optimizations off (ORT_DISABLE_ALL)"),
        PathSpec("conv-fold", "inference of Conv(identity 1x1) -> BatchNormalization, which ONNX Runtime folds "
                              "into the convolution when it loads the model (ORT_ENABLE_ALL)"),
    )

    def __init__(self, opset: int = 15):
        self.opset = opset
        self.name = "onnxruntime" if opset == 15 else f"onnxruntime.opset{opset}"
        self.api = f"onnx BatchNormalization-{opset} (ONNX Runtime CPU)"
        self.quantities = frozenset(QUANTITIES) - FIRST_ORDER - SECOND_ORDER - {"num_batches_tracked"} - (
            {"batch_mean", "batch_var"} if opset >= 14 else set())

    def setup(self) -> None:
        import onnx
        import onnxruntime as ort

        self.onnx, self.ort = onnx, ort
        self.sessions: dict = {}
        self.device = "cpu"

    def versions(self) -> dict[str, str]:
        if hasattr(self, "ort"):
            return {"onnxruntime": self.ort.__version__, "onnx": self.onnx.__version__}
        from importlib.metadata import version  # before setup(): from the installed distributions

        return {"onnxruntime": version("onnxruntime"), "onnx": version("onnx")}

    def precision(self, problem: Problem) -> Precision:
        return Precision.uniform(problem.dtype)  # float16: statistics accumulated in float (opset 15 text)

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "ONNX BatchNormalization has no cumulative average"
        if problem.memory_format != "contiguous":
            return "ONNX tensors have no memory format; the case would repeat the contiguous one"
        if len(problem.shape) < 2:
            return "ONNX BatchNormalization needs (N, C, ...)"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        if problem.use_defaults:
            return {}  # the schema's defaults: momentum=0.9, epsilon=1e-5
        return {"momentum": self.native_momentum(problem), "epsilon": problem.eps}

    def model(self, problem: Problem, train: bool, folded: dict | None = None):
        """The one-node model (every tensor a graph input, so one session serves every value).

        folded: the inference model Conv(identity 1x1) -> BatchNormalization with the BN parameters and statistics
        as initializers (`folded` holds them), the form ONNX Runtime's ConvBNFusion folds at load time."""
        h, tp = self.onnx.helper, self.onnx.TensorProto
        t = getattr(tp, _TYPES[problem.dtype])
        attrs = dict(self.native_config(problem), **({"training_mode": 1} if train and self.opset >= 14 else {}))
        outs = ["Y"] + (["running_mean", "running_var"] if train else []) + (
            ["saved_mean", "saved_var"] if train and self.opset < 14 else [])
        names = ["X", "scale", "B", "input_mean", "input_var"]
        if folded is not None:
            from onnx import numpy_helper

            c, rank = problem.channels, len(problem.shape)
            w = np.zeros((c, c) + (1,) * (rank - 2), dtype=problem.dtype)
            w[(range(c), range(c)) + (0,) * (rank - 2)] = 1
            inits = [numpy_helper.from_array(w, "W")] + [numpy_helper.from_array(v, k) for k, v in folded.items()]
            conv = h.make_node("Conv", ["X", "W"], ["XC"], kernel_shape=[1] * (rank - 2))
            node = h.make_node("BatchNormalization", ["XC"] + names[1:], outs, **attrs)
            graph = h.make_graph([conv, node], "conv_bn", [h.make_tensor_value_info("X", t, None)],
                                 [h.make_tensor_value_info(o, t, None) for o in outs], initializer=inits)
            return h.make_model(graph, opset_imports=[h.make_opsetid("", self.opset)], ir_version=8)
        node = h.make_node("BatchNormalization", names, outs, **attrs)
        graph = h.make_graph([node], "bn", [h.make_tensor_value_info(n, t, None) for n in names],
                             [h.make_tensor_value_info(o, t, None) for o in outs])
        return h.make_model(graph, opset_imports=[h.make_opsetid("", self.opset)], ir_version=8)

    def _options(self, optimize: bool):
        opts = self.ort.SessionOptions()
        threads = os.environ.get("BNCONFORM_THREADS")
        if threads:
            opts.intra_op_num_threads = int(threads)
        if not optimize:
            opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return opts

    def session(self, problem: Problem, train: bool, optimize: bool = True):
        key = (problem.shape, problem.dtype, self.opset, train, tuple(sorted(self.native_config(problem).items())),
               optimize)
        if key not in self.sessions:
            self.sessions[key] = self.ort.InferenceSession(self.model(problem, train).SerializeToString(),
                                                           self._options(optimize),
                                                           providers=["CPUExecutionProvider"])
        return self.sessions[key]

    def folded_session(self, problem: Problem, feeds: dict):
        """A fresh session of the Conv -> BN inference model with the current statistics as initializers."""
        state = {k: feeds[k] for k in ("scale", "B", "input_mean", "input_var")}
        return self.ort.InferenceSession(self.model(problem, False, state).SerializeToString(), self._options(True),
                                         providers=["CPUExecutionProvider"])

    # -- execution paths
    def path_unsupported(self, problem: Problem, path: str) -> str | None:
        if path == "conv-fold":
            if "eval" not in problem.modes or not problem.track_running_stats:
                return "no inference step with running statistics to fold into a convolution"
            if len(problem.shape) < 3:
                return "ONNX Runtime folds BatchNormalization into a Conv; an (N, C) input has no convolution"
            if problem.dtype == "float64":
                return "ONNX Runtime's CPU provider has no float64 Conv kernel"
        return None

    def run_path(self, problem: Problem, path: str) -> Observation:
        return self.run(problem, path)

    def run(self, p: Problem, path: str = "eager") -> Observation:
        dt = np.dtype(p.dtype)
        feeds = {"scale": (p.gamma if p.affine else np.ones(p.channels)).astype(dt),
                 "B": (p.beta if p.affine else np.zeros(p.channels)).astype(dt),
                 "input_mean": p.running_mean.astype(dt), "input_var": p.running_var.astype(dt)}
        got: dict[str, list] = {q: [] for q in ("y", "running_mean", "running_var", "batch_mean", "batch_var")}
        for x, mode in zip(p.xs, p.modes):
            # Without running statistics every step normalizes with the batch statistics: training mode,
            # outputs other than Y discarded.
            train = mode == "train" or not p.track_running_stats
            if path == "conv-fold" and not train:
                out = self.folded_session(p, feeds).run(None, {"X": x.astype(dt)})
            else:
                out = self.session(p, train, optimize=path != "opt-disabled").run(None, {"X": x.astype(dt), **feeds})
            got["y"].append(out[0])
            if train and p.track_running_stats:
                feeds["input_mean"], feeds["input_var"] = out[1], out[2]
            if mode == "train" and self.opset < 14:  # saved_mean, saved_var
                got["batch_mean"].append(out[3])
                got["batch_var"].append(out[4])
            got["running_mean"].append(feeds["input_mean"])
            got["running_var"].append(feeds["input_var"])
        obs = Observation(facts={"device": "cpu", "opset": str(self.opset)})
        if path == "conv-fold":
            obs.facts["folded"] = _fused_ops(self, p, feeds)
        for q, arrays in got.items():
            if arrays and (p.track_running_stats or not q.startswith("running")):
                obs.put(q, np.stack(arrays), str(arrays[0].dtype))
        if self.opset >= 14:
            for q in ("batch_mean", "batch_var"):
                obs.unsupported[q] = f"BatchNormalization-{self.opset} does not output the batch statistics"
        for q in FIRST_ORDER | SECOND_ORDER:
            obs.unsupported[q] = "ONNX Runtime inference sessions compute no gradients"
        obs.unsupported["num_batches_tracked"] = "ONNX BatchNormalization keeps no step counter"
        return obs

    def snippet(self, p: Problem) -> str:
        cfg = "".join(f", {k}={v!r}" for k, v in self.native_config(p).items())
        train_kw, outs = ("{'training_mode': 1}", "['Y', 'rm', 'rv']") if self.opset >= 14 else (
            "{}", "['Y', 'rm', 'rv', 'sm', 'sv']")
        t, track = _TYPES[p.dtype], p.track_running_stats
        return "\n".join([
            "import onnxruntime as ort",
            "from onnx import helper as h, TensorProto as tp",
            f"dt, names = np.{p.dtype}, ['X', 'scale', 'B', 'input_mean', 'input_var']",
            "def session(train):",
            f"    outs = {outs} if train else ['Y']",
            f"    node = h.make_node('BatchNormalization', names, outs{cfg}, **({train_kw} if train else {{}}))",
            f"    g = h.make_graph([node], 'bn', [h.make_tensor_value_info(n, tp.{t}, None) for n in names],",
            f"                     [h.make_tensor_value_info(o, tp.{t}, None) for o in outs])",
            f"    m = h.make_model(g, opset_imports=[h.make_opsetid('', {self.opset})], ir_version=8)",
            "    return ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])",
            "C = p.running_mean.shape[0]",
            "feeds = {'scale': (p.gamma if p.gamma is not None else np.ones(C)).astype(dt),",
            "         'B': (p.beta if p.beta is not None else np.zeros(C)).astype(dt),",
            "         'input_mean': p.running_mean.astype(dt), 'input_var': p.running_var.astype(dt)}",
            "got = {q: [] for q in ('y', 'running_mean', 'running_var', 'batch_mean', 'batch_var')}",
            "for x, mode in zip(p.xs, p.modes):",
            f"    train = {'mode == ' + repr('train') if track else 'True'}",
            "    out = session(train).run(None, {'X': x.astype(dt), **feeds})",
            "    got['y'].append(out[0])",
            f"    if train and {track}:",
            "        feeds['input_mean'], feeds['input_var'] = out[1], out[2]",
            f"    if mode == 'train' and {self.opset < 14}:",
            "        got['batch_mean'].append(out[3]); got['batch_var'].append(out[4])",
            "    got['running_mean'].append(feeds['input_mean']); got['running_var'].append(feeds['input_var'])",
            "observed = {q: np.stack(a).astype(np.float64) for q, a in got.items()"
            f" if a and ({track} or not q.startswith('running'))}}",
        ])

    def bench(self, shape, dtype, what):
        """session.run of the one-node model on NCHW, inputs as NumPy arrays (what ORT's CPU provider reads in
        place); training mode returns Y and the running statistics. No gradients: ORT inference sessions have
        none (onnxruntime-training is another package)."""
        from . import bench_support as bs
        from .base import Unsupported

        if what == "train_backward":
            raise Unsupported("ONNX Runtime inference sessions compute no gradients")
        p, layout = bs.start(self, shape, dtype, what, "first")
        dt = np.dtype(p.dtype)
        feeds = {"X": np.ascontiguousarray(p.xs[0], dtype=dt), "scale": p.gamma.astype(dt), "B": p.beta.astype(dt),
                 "input_mean": p.running_mean.astype(dt), "input_var": p.running_var.astype(dt)}
        session = self.session(p, what == "train")
        return bs.make(lambda: session.run(None, feeds), p, layout, what)


def _fused_ops(adapter, p: Problem, feeds: dict) -> str:
    """What ONNX Runtime made of Conv -> BatchNormalization (its optimized graph, written to a temporary file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        opts = adapter._options(True)
        opts.log_severity_level = 3  # the NCHWc "hardware specific" notice is about the saved file, which we discard
        opts.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        state = {k: feeds[k] for k in ("scale", "B", "input_mean", "input_var")}
        adapter.ort.InferenceSession(adapter.model(p, False, state).SerializeToString(), opts,
                                     providers=["CPUExecutionProvider"])
        graph = adapter.onnx.load(opts.optimized_model_filepath).graph
        return "optimized graph: " + " -> ".join(n.op_type for n in graph.node)
