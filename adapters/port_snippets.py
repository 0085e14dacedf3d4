"""Framework code for `bnconform port`'s porting code: per API, a function that builds the BatchNorm layer with
the ported hyperparameters, loads a trained state into it, and runs a batch through it in inference.

Each block is plain text (no framework is imported here) defining `NAME(x, state)`: x is a NumPy batch in
(N, C, spatial...) order, state a dict of NumPy arrays with the roles gamma, beta, mean, var; it returns the
layer's inference output as a float64 NumPy array in the same (N, C, ...) order. The block moves the channel
axis itself when its layout is channels-last, so the caller never does. Keyed by the adapter's module.
"""
from __future__ import annotations


def _to(last: bool) -> str:
    return "xt = np.moveaxis(x, 1, -1)  # channels last, as the layer's axis expects" if last else "xt = x"


def _back(last: bool) -> str:
    return "return np.moveaxis(y, -1, 1)  # back to (N, C, ...)" if last else "return y"


def _torch(name, cfg, layout, spec_kwargs):
    return f'''
def {name}(x, state):
    import torch
    rank = x.ndim
    cls = {{2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}}[rank]
    bn = cls(**{cfg!r}).eval()
    bn.load_state_dict({{"weight": torch.tensor(state["gamma"]), "bias": torch.tensor(state["beta"]),
                        "running_mean": torch.tensor(state["mean"]), "running_var": torch.tensor(state["var"]),
                        "num_batches_tracked": torch.tensor(0)}})
    with torch.no_grad():
        return bn(torch.tensor(x)).double().numpy()
'''


def _keras(name, cfg, layout, spec_kwargs, header=None, to_numpy="keras.ops.convert_to_numpy"):
    backend = spec_kwargs.get("backend", "tensorflow")
    header = header or f'import os\n    os.environ.setdefault("KERAS_BACKEND", {backend!r})\n    import keras'
    return f'''
def {name}(x, state):
    {header}
    {_to(layout == "channels_last")}
    layer = keras.layers.BatchNormalization(**{cfg!r})
    layer.build(xt.shape)
    layer.set_weights([state["gamma"], state["beta"], state["mean"], state["var"]])  # Keras' weights order
    y = np.asarray({to_numpy}(layer(xt, training=False)), dtype=np.float64)
    {_back(layout == "channels_last")}
'''


def _tf_keras(name, cfg, layout, spec_kwargs):
    return _keras(name, cfg, layout, spec_kwargs, header="import tf_keras as keras", to_numpy="np.asarray")


def _flax_linen(name, cfg, layout, spec_kwargs):
    last = layout == "channels_last"
    return f'''
def {name}(x, state):
    import jax.numpy as jnp
    import flax.linen as nn
    {_to(last)}
    bn = nn.BatchNorm(use_running_average=True, **{cfg!r})
    variables = {{"params": {{"scale": jnp.asarray(state["gamma"]), "bias": jnp.asarray(state["beta"])}},
                 "batch_stats": {{"mean": jnp.asarray(state["mean"]), "var": jnp.asarray(state["var"])}}}}
    y = np.asarray(bn.apply(variables, jnp.asarray(xt)), dtype=np.float64)
    {_back(last)}
'''


def _flax_nnx(name, cfg, layout, spec_kwargs):
    last = layout == "channels_last"
    return f'''
def {name}(x, state):
    import jax.numpy as jnp
    from flax import nnx
    {_to(last)}
    bn = nnx.BatchNorm(use_running_average=True, rngs=nnx.Rngs(0), **{cfg!r})
    bn.scale.value, bn.bias.value = jnp.asarray(state["gamma"]), jnp.asarray(state["beta"])
    bn.mean.value, bn.var.value = jnp.asarray(state["mean"]), jnp.asarray(state["var"])
    y = np.asarray(bn(jnp.asarray(xt)), dtype=np.float64)
    {_back(last)}
'''


def _onnx(name, cfg, layout, spec_kwargs):
    opset = spec_kwargs.get("opset", 15)
    return f'''
def {name}(x, state):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    inits = [numpy_helper.from_array(np.asarray(state[r], dtype=x.dtype), n) for r, n in
             (("gamma", "scale"), ("beta", "B"), ("mean", "input_mean"), ("var", "input_var"))]
    node = helper.make_node("BatchNormalization", ["X", "scale", "B", "input_mean", "input_var"], ["Y"],
                            **{cfg!r})
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph([node], "bn", [helper.make_tensor_value_info("X", elem, None)],
                              [helper.make_tensor_value_info("Y", elem, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", {opset})], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {{"X": x}})[0].astype(np.float64)
'''


BY_MODULE = {
    "adapters.torch_module": _torch,
    "adapters.keras3": _keras,
    "adapters.tf_keras": _tf_keras,
    "adapters.flax_linen": _flax_linen,
    "adapters.flax_nnx": _flax_nnx,
    "adapters.onnxruntime_bn": _onnx,
}


def layer_block(module: str, name: str, cfg: dict, layout: str, spec_kwargs: dict) -> str | None:
    """The text of `def name(x, state)` for the API implemented in `module`, or None where there is none."""
    make = BY_MODULE.get(module)
    return make(name, cfg, layout, spec_kwargs).strip("\n") if make else None


def inference_config(module: str, cfg: dict) -> dict:
    """The constructor arguments of an inference-only layer: `cfg` (the port's native configuration) without
    what only the adapter's harness passes (policy/dtype names the user's model sets elsewhere)."""
    drop = {"adapters.keras3": {"dtype"}, "adapters.tf_keras": {"dtype"},
            "adapters.flax_linen": {"dtype", "param_dtype"}, "adapters.flax_nnx": {"dtype", "param_dtype"},
            "adapters.onnxruntime_bn": {"momentum"}}.get(module, set())
    return {k: v for k, v in cfg.items() if k not in drop and not k.startswith("_")}
