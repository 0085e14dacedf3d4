"""torch.nn.BatchNorm on the execution paths users run it on, besides calling it eagerly.

  compile        torch.compile(module, backend="inductor", fullgraph=True): Inductor's CPU C++ code
  compile-aot    torch.compile(module, backend="aot_eager", fullgraph=True): dynamo + AOTAutograd with the default
                 decompositions and no code generation, so a decomposition bug is told apart from a codegen bug
  export-onnx    torch.onnx.export(module, dynamo=True) in the module's mode, run by ONNX Runtime (CPU)
  fold-eval      every inference step folded into a preceding identity convolution (1x1; a Linear for (N, C)):
                 torch.nn.utils.fusion.fuse_conv_bn_eval / fuse_linear_bn_eval, what inference and quantization
                 tool chains do; BN o identity = BN, so the oracle is BN's
  autocast-bf16  a float32 model under torch.autocast("cpu", dtype=torch.bfloat16): BatchNorm receives the
                 bfloat16 activations of the layer before it and keeps float32 parameters and statistics

Compilation state never leaks between cases (torch._dynamo.reset() per case: no recompilation limit reached, no
fallback to eager); Inductor's compiled code persists on disk under $BNCONFORM_CACHE_DIR/inductor (default
reports/.cache/inductor), as the JAX cache does. Where a path cannot produce a quantity (a compiled graph cannot
be differentiated twice, an ONNX Runtime session not at all) the quantity is unsupported with that reason.
"""
from __future__ import annotations

import os

import numpy as np

from reference import FIRST_ORDER, SECOND_ORDER, Problem

from . import torch_common as tc
from .base import EAGER_PATH, Observation, PathSpec, Precision, compiled_code_dir

MODULE_PATHS = (
    EAGER_PATH,
    PathSpec("compile", "torch.compile(module, backend='inductor', fullgraph=True): Inductor's CPU C++ code",
             tier="nightly"),
    PathSpec("compile-aot", "torch.compile(module, backend='aot_eager', fullgraph=True): the default "
                            "decompositions through AOTAutograd, no code generation"),
    PathSpec("export-onnx", "torch.onnx.export(module, dynamo=True) in the module's mode, run by ONNX Runtime",
             tier="nightly"),
    PathSpec("fold-eval", "inference folded into the identity convolution before it "
                          "(torch.nn.utils.fusion.fuse_conv_bn_eval; fuse_linear_bn_eval for (N, C))"),
    PathSpec("autocast-bf16", "a float32 model under torch.autocast('cpu', dtype=torch.bfloat16): BatchNorm gets "
                              "bfloat16 activations, keeps float32 parameters and statistics"),
    PathSpec("sync", "torch.nn.SyncBatchNorm in a one-process group (GPU only)"),
)
SYNC_NEEDS_GPU = ("torch.nn.SyncBatchNorm cannot run on CPU: with a process group initialized, its device check "
                  "('SyncBatchNorm expected input tensor to be on GPU', torch/nn/modules/batchnorm.py, "
                  "SyncBatchNorm.forward) comes before the world-size check; without one it is F.batch_norm. Run "
                  "with BNCONFORM_DEVICE=cuda where a GPU is available")
NO_DOUBLE_BACKWARD = "torch.compile (AOTAutograd) does not support double backward"
_DYNAMO_REFUSALS = "fullgraph=True refused"


def unsupported(adapter, p: Problem, path: str) -> str | None:
    evals = "eval" in p.modes
    if path == "sync" and not tc.device().startswith("cuda"):
        return SYNC_NEEDS_GPU
    if path == "fold-eval":
        if not evals:
            return "no inference step to fold (training runs the unfolded module)"
        if not p.track_running_stats:
            return "folding needs running statistics (without them inference normalizes with batch statistics)"
    if path == "autocast-bf16" and p.dtype != "bfloat16":
        return ("autocast-bf16 runs the bfloat16 cases: under autocast BatchNorm receives bfloat16 activations "
                "(float32 ones pass through in float32, as eager)")
    if path == "export-onnx":
        import importlib.util

        missing = [m for m in ("onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            return f"the export-onnx path needs {' and '.join(missing)} (pip install -e \".[torch]\")"
        if p.dtype == "bfloat16":
            return "ONNX Runtime's CPU provider has no bfloat16 BatchNormalization"
        if p.memory_format != "contiguous":
            return "ONNX tensors have no memory format; the case would repeat the contiguous one"
    return None


def precision(adapter, p: Problem, path: str) -> Precision:
    if path == "autocast-bf16":  # the mixed-type CPU kernel: float32 parameters, statistics and accumulation
        return Precision(io="bfloat16", compute="float32", stats="float32", params="float32", saved="float32")
    if path == "export-onnx":  # ONNX Runtime computes in the tensor type (see adapters/onnxruntime_bn.py)
        return Precision.uniform(p.dtype)
    return adapter.precision(p)


def run(adapter, p: Problem, path: str) -> Observation:
    if path in ("compile", "compile-aot"):
        return _compiled(adapter, p, "inductor" if path == "compile" else "aot_eager")
    if path == "fold-eval":
        return _folded(adapter, p)
    if path == "autocast-bf16":
        torch = adapter.torch
        module = adapter.build(p, dtype=torch.float32)
        return adapter.steps(p, module, input_dtype=torch.bfloat16,
                             context=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    if path == "export-onnx":
        return _exported(adapter, p)
    if path == "sync":
        return _synchronized(adapter, p)
    raise NotImplementedError(path)


# -- sync (GPU): one process, so the statistics are the local batch's and the result must equal eager
def _synchronized(adapter, p: Problem) -> Observation:
    torch = adapter.torch
    import torch.distributed as dist

    if not dist.is_initialized():
        import tempfile

        store = tempfile.NamedTemporaryFile(prefix="bnconform-sync-", delete=False).name
        dist.init_process_group("nccl", init_method=f"file://{store}", rank=0, world_size=1)
    dt = getattr(torch, p.dtype)
    module = torch.nn.SyncBatchNorm(**adapter.native_config(p)).to(adapter.device, dt)
    with torch.no_grad():
        if p.affine:
            module.weight.copy_(torch.tensor(p.gamma))
            module.bias.copy_(torch.tensor(p.beta))
        if p.track_running_stats:
            module.running_mean.copy_(torch.tensor(p.running_mean))
            module.running_var.copy_(torch.tensor(p.running_var))
    obs = adapter.steps(p, module)
    obs.facts["process_group"] = f"{dist.get_backend()} world size {dist.get_world_size()}"
    return obs


# -- compile, compile-aot
def _compiled(adapter, p: Problem, backend: str) -> Observation:
    torch = adapter.torch
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compiled_code_dir("inductor")))
    from torch._dynamo.exc import TorchDynamoException
    from torch._dynamo.utils import counters

    import logging

    for name in ("torch._dynamo", "torch._inductor"):  # the graph break is recorded as a fact, not printed
        logging.getLogger(name).setLevel(logging.ERROR)
    graph = "one graph (fullgraph=True)"
    for fullgraph in (True, False):
        torch._dynamo.reset()
        counters.clear()
        module = adapter.build(p)
        compiled = torch.compile(module, backend=backend, fullgraph=fullgraph)
        try:
            obs = adapter.steps(p, module, call=lambda m, mode, x: compiled(x), second_order=False)
            break
        except TorchDynamoException as e:
            if not fullgraph:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            graph = f"{_DYNAMO_REFUSALS} ({type(e).__name__}: {first[:200]}); ran with graph breaks"
    obs.facts["graph"] = graph
    obs.facts["graphs_compiled"] = str(counters["stats"]["unique_graphs"])
    obs.facts["backend"] = backend
    for q in SECOND_ORDER:
        obs.unsupported[q] = NO_DOUBLE_BACKWARD
    torch._dynamo.reset()
    return obs


# -- fold-eval
def _identity_layer(torch, p: Problem, dtype):
    c, rank = p.channels, len(p.shape)
    if rank == 2:
        layer = torch.nn.Linear(c, c, bias=False)
    else:
        layer = getattr(torch.nn, f"Conv{rank - 2}d")(c, c, kernel_size=1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight.view(c, c)[range(c), range(c)] = 1.0
    return layer.to(adapter_device(), dtype).eval()


def adapter_device() -> str:
    return tc.device()


def _folded(adapter, p: Problem) -> Observation:
    torch = adapter.torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    dt = getattr(torch, p.dtype)
    identity = _identity_layer(torch, p, dt)
    fuse = fuse_linear_bn_eval if len(p.shape) == 2 else fuse_conv_bn_eval

    def call(module, mode, x):
        if mode == "train":
            return module(x)
        return fuse(identity, module)(x)  # module is in eval mode here (steps() set it)

    last_eval = p.modes[-1] == "eval"
    obs = adapter.steps(p, adapter.build(p), call=call, param_grads=not last_eval)
    if last_eval:
        for q in ("dgamma", "dbeta", "d2gamma"):
            obs.unsupported[q] = "folded: gamma and beta are baked into the convolution's weight and bias"
    obs.facts["folded_into"] = type(identity).__name__
    return obs


# -- export-onnx
def _exported(adapter, p: Problem) -> Observation:
    torch = adapter.torch
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    dt = getattr(torch, p.dtype)
    np_dt = np.dtype(p.dtype)
    module = adapter.build(p)
    state = {"weight": p.gamma, "bias": p.beta, "running_mean": p.running_mean, "running_var": p.running_var}
    state = {k: np.asarray(v, dtype=np_dt) for k, v in state.items() if v is not None}
    cache = adapter.__dict__.setdefault("_onnx_exports", {})
    obs = Observation(facts={"device": "cpu", "runtime": f"onnxruntime {ort.__version__}"})
    ys, means, vars_, modes_seen = [], [], [], {}
    for x, mode in zip(p.xs, p.modes):
        key = (p.shape, p.dtype, tuple(sorted(adapter.native_config(p).items())), mode)
        if key not in cache:
            module.train(mode == "train")
            example = torch.tensor(x).to(dt)
            cache[key] = _export_quietly(torch, module, example)
        model = onnx.ModelProto()
        model.CopyFrom(cache[key])
        modes_seen[mode] = _bn_modes(onnx, model)
        for init in model.graph.initializer:
            if init.name in state:
                init.CopyFrom(numpy_helper.from_array(state[init.name], init.name))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.asarray(x, dtype=np_dt)}
        outputs = dict(zip((o.name for o in session.get_outputs()), session.run(None, feed)))
        ys.append(outputs[session.get_outputs()[0].name])
        for name in ("running_mean", "running_var"):  # a graph that updates the statistics returns them
            updated = [v for k, v in outputs.items() if name in k]
            if updated:
                state[name] = updated[0]
        means.append(state.get("running_mean"))
        vars_.append(state.get("running_var"))
    obs.put("y", np.stack(ys), str(ys[0].dtype))
    if p.track_running_stats:
        obs.put("running_mean", np.stack(means), str(means[0].dtype))
        obs.put("running_var", np.stack(vars_), str(vars_[0].dtype))
    obs.facts["exported"] = "; ".join(f"module in {m} mode -> {d}" for m, d in sorted(modes_seen.items()))
    for q in FIRST_ORDER | SECOND_ORDER:
        obs.unsupported[q] = "an ONNX Runtime inference session computes no gradients"
    obs.unsupported["num_batches_tracked"] = "the exported graph keeps no step counter"
    for q in ("batch_mean", "batch_var"):
        obs.unsupported[q] = "torch.nn.BatchNorm does not expose the batch statistics"
    return obs


def _export_quietly(torch, module, example):
    """The exporter's model; its notices (torchvision ops not registered, "model in training mode") are not
    findings of ours: the mode it exported is recorded as a fact, from the graph itself."""
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(module, (example,), dynamo=True, verbose=False).model_proto
    finally:
        logger.setLevel(level)


def _bn_modes(onnx, model) -> str:
    """How the exported graph normalizes: its BatchNormalization nodes' training_mode and outputs."""
    out = []
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            out.append(f"BatchNormalization training_mode={attrs.get('training_mode', 0)}, "
                       f"{len(node.output)} output(s)")
    return ", ".join(out) or "no BatchNormalization node (decomposed)"


# -- repro snippets
_SNIPPET_CALL = {
    "compile": "call = torch.compile(bn, backend='inductor', fullgraph=True)",
    "compile-aot": "call = torch.compile(bn, backend='aot_eager', fullgraph=True)",
}


def snippet(adapter, p: Problem, path: str) -> str:
    """The eager snippet with the path's call in place of `bn(xt)`."""
    base = adapter.snippet(p)
    if path in _SNIPPET_CALL:
        base = base.replace("ys, means, vars_ = [], [], []", _SNIPPET_CALL[path] + "\nys, means, vars_ = [], [], []")
        return base.replace("    y = bn(xt)", "    y = call(xt)")
    if path == "autocast-bf16":
        base = base.replace("dt = torch.bfloat16", "dt = torch.bfloat16  # activations; the model is float32")
        base = base.replace(".to(dtype=dt)", ".to(dtype=torch.float32)")
        return base.replace("    y = bn(xt)", "    with torch.autocast('cpu', dtype=torch.bfloat16):\n"
                                             "        y = bn(xt)")
    if path == "fold-eval":
        rank = len(p.shape)
        layer = ("torch.nn.Linear(C, C, bias=False)" if rank == 2 else
                 f"torch.nn.Conv{rank - 2}d(C, C, kernel_size=1, bias=False)")
        fuse = "fuse_linear_bn_eval" if rank == 2 else "fuse_conv_bn_eval"
        head = "\n".join([
            f"from torch.nn.utils.fusion import {fuse}",
            "C = p.running_mean.shape[0]",
            f"ident = {layer}.to(dtype=dt).eval()",
            "with torch.no_grad():",
            "    ident.weight.zero_(); ident.weight.view(C, C)[range(C), range(C)] = 1.0",
        ])
        base = base.replace("ys, means, vars_ = [], [], []", head + "\nys, means, vars_ = [], [], []")
        return base.replace("    y = bn(xt)", f"    y = bn(xt) if mode == 'train' else {fuse}(ident, bn)(xt)")
    if path == "export-onnx":
        head = base[:base.index("ys, means, vars_ = [], [], []")]
        return head + "\n".join([
            "import onnxruntime as ort",
            "ys = []",
            "for x, mode in zip(p.xs, p.modes):",
            "    bn.train(mode == 'train')",
            "    prog = torch.onnx.export(bn, (torch.tensor(x).to(dt),), dynamo=True)",
            "    s = ort.InferenceSession(prog.model_proto.SerializeToString(), providers=['CPUExecutionProvider'])",
            f"    ys.append(s.run(None, {{s.get_inputs()[0].name: x.astype(np.{p.dtype})}})[0].astype(np.float64))",
            "observed = {'y': np.stack(ys)}  # the running statistics stay as exported: ORT returns none",
        ])
    return base
