"""The porter's journey, one framework per process (Keras fixes its backend at import; each import costs
seconds): `python -m tests.unit.port_journey STEP DIR` reads and writes files in DIR and prints one JSON line.

The model: conv(3->4, 3x3, same) -> BatchNorm -> relu -> conv(4->6, 3x3, same) -> BatchNorm -> global average
pool -> linear(6->2), float32, trained for STEPS SGD steps on fixed batches of N x 3 x H x W.

  torch-train       train it in torch, recording each BatchNorm's input at every step; save the state_dict
                    (torch.pt), the weights in torch's layout, the eval output, and the ONNX Runtime eval output
                    of the exported model;
  keras             Keras 3 (tensorflow backend): the torch model with converted weights (bn_inference.weights.h5)
                    in inference, and with naive defaults; every BatchNorm layer retrained on torch's recorded
                    inputs with the ported hyperparameters (what Keras would hold) and with naive defaults; then
                    its own model trained in Keras (keras.weights.h5) for the way back;
  flax              flax.linen, as Keras (bn_inference.msgpack);
  torch-from-keras  torch with the Keras-trained model converted back (bn_from_keras.pt), and torch's
                    BatchNorm retrained on Keras' recorded inputs.
Conv kernels and linear weights are transposed here (OIHW <-> HWIO, (out, in) <-> (in, out)): that is the
model's business; bnconform converts the BatchNorm state.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

N, H, W, STEPS, LR = 4, 6, 6, 30, 0.1
CHANNELS = (3, 4, 6, 2)
TORCH_MOMENTUM, TORCH_EPS = 0.1, 1e-5  # torch's defaults; ported: Keras/flax momentum 0.9
KERAS_MOMENTUM, KERAS_EPS = 0.9, 1e-3  # the Keras model: momentum 0.9 (a common choice), default eps; torch: 0.1, 1e-3
KERAS_DEFAULT_MOMENTUM = 0.99  # what a naive port to Keras gets
BN_LAYERS = ("bn1", "bn2")


def batches(seed=0):
    rng = np.random.default_rng(seed)
    xs = (rng.standard_normal((STEPS, N, CHANNELS[0], H, W)) * 0.1 + 0.05).astype(np.float32)
    ts = rng.standard_normal((STEPS, N, CHANNELS[3])).astype(np.float32)
    x_eval = (rng.standard_normal((N, CHANNELS[0], H, W)) * 0.1 + 0.05).astype(np.float32)
    return xs, ts, x_eval


def nhwc(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def nchw(a):
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def to_hwio(w):  # torch conv OIHW -> Keras/flax HWIO
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def to_oihw(w):
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


# ---- torch
def torch_model(eps=TORCH_EPS, momentum=TORCH_MOMENTUM):
    import torch

    torch.manual_seed(0)
    c0, c1, c2, c3 = CHANNELS
    bn = dict(eps=eps, momentum=momentum)
    return torch.nn.Sequential(torch.nn.Conv2d(c0, c1, 3, padding=1), torch.nn.BatchNorm2d(c1, **bn), torch.nn.ReLU(),
                               torch.nn.Conv2d(c1, c2, 3, padding=1), torch.nn.BatchNorm2d(c2, **bn),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c2, c3))


TORCH_BN = {"bn1": "1", "bn2": "4"}  # the model's BatchNorm layers by their state_dict path


def torch_train(d: Path) -> dict:
    import torch

    torch.use_deterministic_algorithms(True)
    model = torch_model().train()
    recorded = {k: [] for k in BN_LAYERS}
    hooks = [model.get_submodule(path).register_forward_pre_hook(
        lambda m, inp, name=name: recorded[name].append(inp[0].detach().numpy().copy()))
        for name, path in TORCH_BN.items()]
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xs, ts, x_eval = batches()
    for x, t in zip(xs, ts):
        opt.zero_grad()
        loss = torch.mean((model(torch.from_numpy(x)) - torch.from_numpy(t)) ** 2)
        loss.backward()
        opt.step()
    for h in hooks:  # the training steps only
        h.remove()
    model.eval()
    torch.save(model.state_dict(), d / "torch.pt")
    with torch.no_grad():
        y = model(torch.from_numpy(x_eval)).numpy()
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    np.savez(d / "torch_run.npz", y=y, x_eval=x_eval, **{f"rec_{k}": np.stack(v) for k, v in recorded.items()},
             **{f"w_{k}": v for k, v in weights.items()})
    # ONNX Runtime: the exported eval model on the same batch
    import onnxruntime as ort

    torch.onnx.export(model, (torch.from_numpy(x_eval),), str(d / "model.onnx"), input_names=["x"],
                      output_names=["y"], dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.EVAL)
    import onnx

    ops = sorted({n.op_type for n in onnx.load(str(d / "model.onnx")).graph.node})
    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    y_ort = sess.run(None, {"x": x_eval})[0]
    np.savez(d / "ort.npz", y=y_ort)
    return {"onnx_ops": ops, "torch": torch.__version__, "onnxruntime": ort.__version__}


def torch_from_keras(d: Path) -> dict:
    import torch

    k = np.load(d / "keras_run.npz")
    converted = torch.load(d / "bn_from_keras.pt", weights_only=True)
    ys = {}
    # ported: the hyperparameters `bnconform port --from keras --to torch` prints; naive: torch's defaults
    for label, eps, momentum in (("ported", KERAS_EPS, 1 - KERAS_MOMENTUM), ("naive", TORCH_EPS, TORCH_MOMENTUM)):
        model = torch_model(eps, momentum).eval()
        sd = model.state_dict()
        for i, conv in enumerate(("0", "3")):
            sd[f"{conv}.weight"] = torch.from_numpy(to_oihw(k[f"conv{i + 1}_kernel"]))
            sd[f"{conv}.bias"] = torch.from_numpy(k[f"conv{i + 1}_bias"])
        sd["7.weight"] = torch.from_numpy(np.ascontiguousarray(k["dense_kernel"].T))
        sd["7.bias"] = torch.from_numpy(k["dense_bias"])
        sd.update(converted)
        model.load_state_dict(sd)
        with torch.no_grad():
            ys[label] = model(torch.from_numpy(k["x_eval"])).numpy()
    # torch's own BatchNorm trained on Keras' recorded inputs with the ported hyperparameters
    replay = {}
    for name, c in zip(BN_LAYERS, CHANNELS[1:3]):
        bn = torch.nn.BatchNorm2d(c, momentum=1 - KERAS_MOMENTUM, eps=KERAS_EPS).train()
        with torch.no_grad():
            for x in k[f"rec_{name}"]:
                bn(torch.from_numpy(nchw(x)))
        replay[name] = (bn.running_mean.numpy(), bn.running_var.numpy())
    np.savez(d / "torch_from_keras.npz", y_ported=ys["ported"], y_naive=ys["naive"],
             **{f"replay_{n}_mean": m for n, (m, _) in replay.items()},
             **{f"replay_{n}_var": v for n, (_, v) in replay.items()})
    return {"layers": sorted(converted)}


# ---- Keras 3 (tensorflow backend)
def keras_model(keras, eps, momentum):
    c0, c1, c2, c3 = CHANNELS
    layers = [keras.layers.Conv2D(c1, 3, padding="same"), keras.layers.BatchNormalization(axis=-1, momentum=momentum,
                                                                                          epsilon=eps),
              keras.layers.ReLU(), keras.layers.Conv2D(c2, 3, padding="same"),
              keras.layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=eps),
              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(c3)]
    model = keras.Sequential([keras.Input((H, W, c0)), *layers])
    return model, layers


def _bn_file(path: Path) -> list[list[np.ndarray]]:
    """The converted BatchNorm layers of a .weights.h5 bnconform wrote, in the model's order."""
    import h5py

    with h5py.File(path, "r") as f:
        names = sorted(f["layers"], key=lambda s: (len(s), s))
        return [[np.asarray(f[f"layers/{n}/vars/{i}"]) for i in range(len(f[f"layers/{n}/vars"]))] for n in names]


def keras(d: Path) -> dict:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras as K
    import tensorflow as tf

    t = np.load(d / "torch_run.npz")
    out: dict = {}
    bn_states = _bn_file(d / "bn_inference.weights.h5")
    results = {}
    for label, eps, momentum in (("ported", TORCH_EPS, 1 - TORCH_MOMENTUM),
                                 ("naive", KERAS_EPS, KERAS_DEFAULT_MOMENTUM)):
        model, layers = keras_model(K, eps, momentum)
        layers[0].set_weights([to_hwio(t["w_0.weight"]), t["w_0.bias"]])
        layers[3].set_weights([to_hwio(t["w_3.weight"]), t["w_3.bias"]])
        layers[6].set_weights([np.ascontiguousarray(t["w_7.weight"].T), t["w_7.bias"]])
        layers[1].set_weights(bn_states[0])
        layers[4].set_weights(bn_states[1])
        results[label] = np.asarray(model(nhwc(t["x_eval"]), training=False))
    # what Keras' own BatchNorm holds after training on torch's recorded inputs
    replay = {}
    for label, momentum in (("ported", 1 - TORCH_MOMENTUM), ("naive", KERAS_DEFAULT_MOMENTUM)):
        for name, c in zip(BN_LAYERS, CHANNELS[1:3]):
            bn = K.layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=TORCH_EPS)
            bn.build((N, H, W, c))
            for x in t[f"rec_{name}"]:
                bn(nhwc(x), training=True)
            replay[f"{label}_{name}_mean"] = np.asarray(bn.moving_mean)
            replay[f"{label}_{name}_var"] = np.asarray(bn.moving_variance)
    # the way back: a model trained in Keras
    K.utils.set_random_seed(1)
    model, layers = keras_model(K, KERAS_EPS, KERAS_MOMENTUM)
    opt = K.optimizers.SGD(LR)
    xs, ts, x_eval = batches(seed=1)
    recorded = {k: [] for k in BN_LAYERS}
    for x, tt in zip(xs, ts):
        with tf.GradientTape() as tape:
            h = layers[0](nhwc(x))
            recorded["bn1"].append(np.asarray(h))
            h = layers[3](layers[2](layers[1](h, training=True)))
            recorded["bn2"].append(np.asarray(h))
            y = layers[6](layers[5](layers[4](h, training=True)))
            loss = tf.reduce_mean((y - tt) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
    model.save_weights(str(d / "keras.weights.h5"))
    y_keras = np.asarray(model(nhwc(x_eval), training=False))
    np.savez(d / "keras_run.npz", y_ported=results["ported"], y_naive=results["naive"], y=y_keras,
             x_eval=x_eval, conv1_kernel=layers[0].get_weights()[0], conv1_bias=layers[0].get_weights()[1],
             conv2_kernel=layers[3].get_weights()[0], conv2_bias=layers[3].get_weights()[1],
             dense_kernel=layers[6].get_weights()[0], dense_bias=layers[6].get_weights()[1],
             **{f"bn{i + 1}_{r}": w for i, L in enumerate((layers[1], layers[4]))
                for r, w in zip(("gamma", "beta", "mean", "var"), L.get_weights())},
             **{f"rec_{k}": np.stack(v) for k, v in recorded.items()}, **replay)
    out["keras"] = K.__version__
    out["backend"] = K.backend.backend()
    return out


# ---- flax.linen
def flax(d: Path) -> dict:
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    from flax import serialization

    jax.config.update("jax_platforms", "cpu")
    t = np.load(d / "torch_run.npz")
    converted = serialization.msgpack_restore((d / "bn_inference.msgpack").read_bytes())
    c0, c1, c2, c3 = CHANNELS

    class CNN(nn.Module):
        eps: float
        momentum: float

        @nn.compact
        def __call__(self, x, train):
            bn = dict(use_running_average=not train, momentum=self.momentum, epsilon=self.eps, axis=-1)
            x = nn.Conv(c1, (3, 3), padding="SAME")(x)
            x = nn.relu(nn.BatchNorm(**bn)(x))
            x = nn.BatchNorm(**bn)(nn.Conv(c2, (3, 3), padding="SAME")(x))
            return nn.Dense(c3)(jnp.mean(x, axis=(1, 2)))

    params = {"Conv_0": {"kernel": to_hwio(t["w_0.weight"]), "bias": t["w_0.bias"]},
              "Conv_1": {"kernel": to_hwio(t["w_3.weight"]), "bias": t["w_3.bias"]},
              "Dense_0": {"kernel": np.ascontiguousarray(t["w_7.weight"].T), "bias": t["w_7.bias"]},
              **converted["params"]}
    variables = {"params": params, "batch_stats": converted["batch_stats"]}
    results = {}
    for label, eps in (("ported", TORCH_EPS), ("naive", 1e-5)):  # flax's default eps is torch's: naive == ported
        results[label] = np.asarray(CNN(eps, 0.99).apply(variables, jnp.asarray(nhwc(t["x_eval"])), train=False))
    replay = {}
    for label, momentum in (("ported", 1 - TORCH_MOMENTUM), ("naive", 0.99)):
        for name, c in zip(BN_LAYERS, (c1, c2)):
            bn = nn.BatchNorm(use_running_average=False, momentum=momentum, epsilon=TORCH_EPS, axis=-1)
            stats = {"mean": jnp.zeros(c), "var": jnp.ones(c)}
            prm = {"scale": jnp.ones(c), "bias": jnp.zeros(c)}
            for x in t[f"rec_{name}"]:
                _, upd = bn.apply({"params": prm, "batch_stats": stats}, jnp.asarray(nhwc(x)), mutable=["batch_stats"])
                stats = upd["batch_stats"]
            replay[f"{label}_{name}_mean"] = np.asarray(stats["mean"])
            replay[f"{label}_{name}_var"] = np.asarray(stats["var"])
    np.savez(d / "flax_run.npz", y_ported=results["ported"], y_naive=results["naive"], **replay)
    import flax as F

    return {"flax": F.__version__, "layers": sorted(converted["batch_stats"])}


STEPS_BY_NAME = {"torch-train": torch_train, "keras": keras, "flax": flax, "torch-from-keras": torch_from_keras}

if __name__ == "__main__":
    print("BNCONFORM-JSON " + json.dumps(STEPS_BY_NAME[sys.argv[1]](Path(sys.argv[2]))))
