"""Trained BatchNorm state as each framework stores it: names, order, container. Imports frameworks lazily,
only inside the functions that read or write their own containers (torch `.pt`, flax msgpack); Keras
`.weights.h5` is read and written with h5py, and `.npz` with NumPy, so neither needs Keras or a backend.

A BatchNorm layer's state has four ROLES, the same in every framework: gamma (scale), beta (offset), mean and
var (running statistics), and, where a framework keeps one, count (torch's num_batches_tracked). `FORMATS`
says, per API, the native name of each role, the order a weights list has, where a whole-model file keeps
them, and how a layer name is written. A model's state is {layer name: {native name: array}}.

Sources, read for the names and order:
  torch/nn/modules/batchnorm.py (_NormBase.__init__: weight, bias, running_mean, running_var,
    num_batches_tracked, registered in that order; state_dict keys "<module path>.<name>");
  keras/src/layers/normalization/batch_normalization.py (build: gamma, beta, moving_mean, moving_variance in
    that order, get_weights/set_weights order); keras/src/saving/saving_lib.py (H5IOStore: a layer's
    variables are datasets "vars/0", "vars/1", ... under its path, e.g. "layers/<name>/vars");
  flax/linen/normalization.py (BatchNorm: params "scale", "bias"; batch_stats "mean", "var");
  flax/nnx/nn/normalization.py (scale, bias, mean, var attributes);
  onnx/defs/nn/defs.cc (BatchNormalization inputs X, scale, B, input_mean, input_var).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROLES = ("gamma", "beta", "mean", "var", "count")


@dataclass(frozen=True)
class StateFormat:
    framework: str  # the distribution that reads it
    names: dict  # role -> native name (roles the framework does not keep are absent)
    order: tuple[str, ...]  # the roles in the framework's weights-list order
    container: str  # the native whole-model file: "torch", "keras_h5", "flax_msgpack" or "" (none)
    separator: str  # joins a layer path and a name in a flat file ("bn1.running_mean", "bn1/moving_mean")
    load_hint: str  # how a user puts one layer's converted state into the framework
    auto_name: str = ""  # how the framework names its k-th BatchNorm layer itself ({k}, {_k}: "" for k = 0)

    def layer_name(self, k: int) -> str | None:
        return self.auto_name.format(k=k, _k=f"_{k}" if k else "") if self.auto_name else None


TORCH = StateFormat("torch", {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var",
                              "count": "num_batches_tracked"},
                    ("gamma", "beta", "mean", "var", "count"), "torch", ".",
                    "model.load_state_dict(torch.load(OUT), strict=False)")
KERAS = StateFormat("keras", {"gamma": "gamma", "beta": "beta", "mean": "moving_mean", "var": "moving_variance"},
                    ("gamma", "beta", "mean", "var"), "keras_h5", "/",
                    "layer.set_weights([gamma, beta, moving_mean, moving_variance]) for each BatchNormalization layer",
                    # saving_lib keys a model's layers by class name in order: batch_normalization, _1, _2, ...
                    "batch_normalization{_k}")
FLAX = StateFormat("flax", {"gamma": "scale", "beta": "bias", "mean": "mean", "var": "var"},
                   ("gamma", "beta", "mean", "var"), "flax_msgpack", "/",
                   "variables = {'params': ..., 'batch_stats': ...} from flax.serialization.msgpack_restore",
                   "BatchNorm_{k}")  # linen's automatic names in a compact module, in call order
ONNX = StateFormat("onnx", {"gamma": "scale", "beta": "B", "mean": "input_mean", "var": "input_var"},
                   ("gamma", "beta", "mean", "var"), "", "/",
                   "the BatchNormalization node's initializers scale, B, input_mean, input_var")
# Keyed by the adapter's module: every adapter of one module shares its framework's container.
BY_MODULE = {
    "adapters.torch_module": TORCH, "adapters.torch_functional": TORCH,
    "adapters.keras3": KERAS, "adapters.tf_keras": KERAS,
    "adapters.flax_linen": FLAX, "adapters.flax_nnx": FLAX,
    "adapters.onnxruntime_bn": ONNX,
}
FLAX_COLLECTIONS = {"gamma": "params", "beta": "params", "mean": "batch_stats", "var": "batch_stats"}


class StateFileError(ValueError):
    """A state file cannot be read or holds no BatchNorm state: one line for the user."""


def format_for(module: str) -> StateFormat | None:
    return BY_MODULE.get(module)


def container_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".pt", ".pth", ".bin")):
        return "torch"
    if name.endswith((".h5", ".hdf5", ".keras")):
        return "keras_h5"
    if name.endswith((".msgpack", ".flax")):
        return "flax_msgpack"
    raise StateFileError(f"{path}: unknown state file type (use .npz, .pt/.pth (torch state_dict), "
                         ".weights.h5 (Keras) or .msgpack (flax variables))")


# -- reading: every container becomes a flat {path: array} with "/"-joined paths, then layers are grouped
def read_flat(path: Path) -> dict[str, np.ndarray]:
    kind = container_of(path)
    if not path.is_file():
        raise StateFileError(f"{path}: no such file")
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        if kind == "torch":
            return _read_torch(path)
        if kind == "keras_h5":
            return _read_h5(path)
        return _read_msgpack(path)
    except StateFileError:
        raise
    except ImportError as e:
        raise StateFileError(f"{path}: reading it needs {e.name or e}, which is not installed") from None
    except Exception as e:  # noqa: BLE001 - any parser error is one line for the user
        first = (str(e).strip().splitlines() or [""])[0][:160]  # parsers' messages run to many lines
        raise StateFileError(f"{path}: not a readable {kind} file ({type(e).__name__}: {first})") from None


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if hasattr(sd, "state_dict"):
        sd = sd.state_dict()
    if not isinstance(sd, dict):
        raise StateFileError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return {k: v.detach().cpu().numpy() for k, v in sd.items() if hasattr(v, "detach")}


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()])
        f.visititems(visit)
    return out


def _read_msgpack(path: Path) -> dict[str, np.ndarray]:
    from flax import serialization

    tree = serialization.msgpack_restore(path.read_bytes())
    out: dict[str, np.ndarray] = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            out[prefix] = np.asarray(node)
    walk("", tree)
    return out


def group_layers(flat: dict[str, np.ndarray], fmt: StateFormat) -> dict[str, dict[str, np.ndarray]]:
    """{layer: {role: array}} for every BatchNorm layer in a flat file written in `fmt`'s names.

    A layer is a path that holds both running statistics under the format's names. Keras files keep a layer's
    variables as vars/0, vars/1, ... in the weights order; flax keeps the statistics under batch_stats/ and
    gamma/beta under params/ with the same module path."""
    if fmt is KERAS and any(re.search(r"/vars/\d+$", k) for k in flat):
        return _group_keras_h5(flat)
    if fmt is FLAX and any(k.startswith("batch_stats/") for k in flat):
        return _group_flax(flat)
    names = {v: r for r, v in fmt.names.items()}
    layers: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in flat.items():
        m = re.match(r"^(.*?)[./]?([^./]+)$", key)
        prefix, name = m.group(1), m.group(2)
        if name in names:
            layers.setdefault(prefix, {})[names[name]] = arr
    return {k: v for k, v in layers.items() if "mean" in v and "var" in v}


def _group_keras_h5(flat):
    layers: dict[str, dict] = {}
    for key, arr in flat.items():
        m = re.match(r"^(.*)/vars/(\d+)$", key)
        if m:
            layers.setdefault(m.group(1), {})[int(m.group(2))] = arr
    out = {}
    for path, by_index in layers.items():
        leaf = path.rsplit("/", 1)[-1]
        vecs = [by_index[i] for i in sorted(by_index)]
        # a BatchNormalization layer: its name says so (Keras names it batch_normalization[_k] unless the user
        # named it) and it holds 2 (no center/scale) to 4 vectors of one length
        if "batch_norm" in leaf and 2 <= len(vecs) <= 4 and len({v.shape for v in vecs}) == 1 and vecs[0].ndim == 1:
            roles = KERAS.order[-len(vecs):] if len(vecs) < 4 else KERAS.order
            out[path.removeprefix("layers/")] = dict(zip(roles, vecs))  # written back under layers/
    return out


def _group_flax(flat):
    out: dict[str, dict] = {}
    for key, arr in flat.items():
        coll, _, rest = key.partition("/")
        layer, _, name = rest.rpartition("/")
        role = {"batch_stats": {"mean": "mean", "var": "var"}, "params": {"scale": "gamma", "bias": "beta"}}.get(
            coll, {}).get(name)
        if role:
            out.setdefault(layer, {})[role] = arr
    return {k: v for k, v in out.items() if "mean" in v and "var" in v}


# -- writing
def write(path: Path, layers: dict[str, dict[str, np.ndarray]], fmt: StateFormat) -> str:
    """Write converted layers ({layer: {role: array}}) in `fmt`'s names to `path` (its suffix picks the
    container: .npz always; otherwise the target framework's own). Returns the container written."""
    kind = container_of(path)
    if kind != "npz" and kind != fmt.container:
        raise StateFileError(f"{path}: the target ({fmt.framework}) does not read this container; use .npz"
                             + (f" or its own ({_SUFFIX[fmt.container]})" if fmt.container else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "npz":
        flat = {f"{layer}{fmt.separator}{fmt.names[r]}": a for layer, st in layers.items() for r, a in st.items()
                if r in fmt.names}
        with open(path, "wb") as f:
            np.savez(f, **flat)
    elif kind == "torch":
        import torch

        sd = {f"{layer}.{fmt.names[r]}": torch.from_numpy(np.ascontiguousarray(a))
              for layer, st in layers.items() for r, a in st.items() if r in fmt.names}
        torch.save(sd, path)
    elif kind == "keras_h5":
        import h5py

        with h5py.File(path, "w") as f:
            for layer, st in layers.items():
                g = f.require_group(f"layers/{layer}/vars")
                for i, r in enumerate(r for r in fmt.order if r in st):
                    g.create_dataset(str(i), data=st[r])
    else:
        from flax import serialization

        tree: dict = {"params": {}, "batch_stats": {}}
        for layer, st in layers.items():
            for r, a in st.items():
                if r in FLAX_COLLECTIONS:
                    tree[FLAX_COLLECTIONS[r]].setdefault(layer, {})[fmt.names[r]] = a
        path.write_bytes(serialization.msgpack_serialize(tree))
    return kind


_SUFFIX = {"torch": ".pt", "keras_h5": ".weights.h5", "flax_msgpack": ".msgpack"}
