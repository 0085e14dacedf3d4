"""The catalogue of adapters: what exists, what it needs, how to install it. Imports no framework.

Each entry names the module and class that implement it, the import names that must be importable for it
to run (checked with importlib.util.find_spec, which imports nothing), and the pip extra that installs
them. `load(name)` imports the adapter module (which still imports its framework only in `setup()`).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    module: str
    cls: str
    requires: tuple[str, ...]  # import names
    install: str  # the pip command that makes it available
    family: str  # tox env / extra family
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    core: bool = True  # part of the default frameworks ("all" extra)
    # Adapters naming the same process share one worker process (the family's imports paid once; see
    # conformance/execution/worker.py); empty: a process of its own (Keras 3 fixes its backend per process).
    process: str = ""

    def missing(self) -> list[str]:
        """Import names that cannot be found (empty: the adapter can run here)."""
        out = []
        for mod in self.requires:
            try:
                if importlib.util.find_spec(mod) is None:
                    out.append(mod)
            except (ImportError, ValueError):
                out.append(mod)
        if not out:
            try:
                if importlib.util.find_spec(self.module) is None:
                    out.append(self.module)
            except (ImportError, ValueError):
                out.append(self.module)
        return out

    def available(self) -> bool:
        return not self.missing()


_PIP = 'pip install "bnconform[{}]"'

SPECS: tuple[AdapterSpec, ...] = (
    AdapterSpec("torch.nn.BatchNorm", "adapters.torch_module", "TorchModule", ("torch",), _PIP.format("torch"),
                "torch",
                process="torch"),
    AdapterSpec("torch.nn.functional.batch_norm", "adapters.torch_functional", "TorchFunctional", ("torch",),
                _PIP.format("torch"), "torch",
                process="torch"),
    AdapterSpec("tf.nn.batch_normalization", "adapters.tf_nn", "TFNN", ("tensorflow",), _PIP.format("tf"), "tf",
                process="tensorflow"),
    AdapterSpec("tf.raw_ops.FusedBatchNormV3", "adapters.tf_fused", "TFFused", ("tensorflow",),
                _PIP.format("tf"), "tf",
                process="tensorflow"),
    AdapterSpec("keras.tensorflow", "adapters.keras3", "Keras3", ("keras", "tensorflow"),
                _PIP.format("keras,tf"), "keras", {"backend": "tensorflow"},
                process="tensorflow"),
    AdapterSpec("keras.jax", "adapters.keras3", "Keras3", ("keras", "jax"), _PIP.format("keras,jax"), "keras",
                {"backend": "jax"}),
    AdapterSpec("keras.torch", "adapters.keras3", "Keras3", ("keras", "torch"), _PIP.format("keras,torch"),
                "keras", {"backend": "torch"}),
    AdapterSpec("tf_keras.fused", "adapters.tf_keras", "TFKeras", ("tf_keras", "tensorflow"),
                'pip install "bnconform[tf]" && pip install --no-deps tf-keras', "tf", {"fused": True},
                process="tensorflow"),
    AdapterSpec("tf_keras.nonfused", "adapters.tf_keras", "TFKeras", ("tf_keras", "tensorflow"),
                'pip install "bnconform[tf]" && pip install --no-deps tf-keras', "tf", {"fused": False},
                process="tensorflow"),
    AdapterSpec("flax.linen", "adapters.flax_linen", "FlaxLinen", ("flax", "jax"), _PIP.format("jax"), "jax",
                {"use_fast_variance": True},
                process="jax"),
    AdapterSpec("flax.linen.two_pass", "adapters.flax_linen", "FlaxLinen", ("flax", "jax"), _PIP.format("jax"),
                "jax", {"use_fast_variance": False},
                process="jax"),
    AdapterSpec("flax.nnx", "adapters.flax_nnx", "FlaxNNX", ("flax", "jax"), _PIP.format("jax"), "jax",
                process="jax"),
    AdapterSpec("equinox.ema", "adapters.equinox_bn", "EquinoxBatchNorm", ("equinox", "jax"), _PIP.format("jax"),
                "jax", {"mode": "ema"},
                process="jax"),
    AdapterSpec("equinox.batch", "adapters.equinox_bn", "EquinoxBatchNorm", ("equinox", "jax"),
                _PIP.format("jax"), "jax", {"mode": "batch"},
                process="jax"),
    AdapterSpec("haiku", "adapters.haiku_bn", "HaikuBatchNorm", ("haiku", "jax"), _PIP.format("jax"), "jax",
                process="jax"),
    AdapterSpec("onnxruntime", "adapters.onnxruntime_bn", "OnnxRuntimeBatchNorm", ("onnx", "onnxruntime"),
                _PIP.format("onnx"), "onnx", {"opset": 15},
                process="onnxruntime"),
    AdapterSpec("onnxruntime.opset14", "adapters.onnxruntime_bn", "OnnxRuntimeBatchNorm", ("onnx", "onnxruntime"),
                _PIP.format("onnx"), "onnx", {"opset": 14},
                process="onnxruntime"),
    AdapterSpec("onnxruntime.opset9", "adapters.onnxruntime_bn", "OnnxRuntimeBatchNorm", ("onnx", "onnxruntime"),
                _PIP.format("onnx"), "onnx", {"opset": 9},
                process="onnxruntime"),
    # Optional extras: not part of "all"; each has its own extra and tox env.
    AdapterSpec("paddle", "adapters.paddle_bn", "PaddleBatchNorm", ("paddle",), _PIP.format("paddle"), "paddle",
                core=False),
    AdapterSpec("mlx", "adapters.mlx_bn", "MLXBatchNorm", ("mlx",), _PIP.format("mlx"), "mlx", core=False),
    AdapterSpec("tinygrad", "adapters.tinygrad_bn", "TinygradBatchNorm", ("tinygrad",), _PIP.format("tinygrad"),
                "tinygrad", core=False),
    AdapterSpec("mindspore", "adapters.mindspore_bn", "MindSporeBatchNorm", ("mindspore",),
                _PIP.format("mindspore"), "mindspore", core=False),
)
BY_NAME = {s.name: s for s in SPECS}


def spec(name: str) -> AdapterSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown adapter {name!r}; known: {', '.join(BY_NAME)}") from None


def load(name: str, **overrides):
    """Instantiate the adapter `name` (imports its module, not its framework)."""
    s = spec(name)
    module = importlib.import_module(s.module)
    cls = getattr(module, s.cls)
    return cls(**{**s.kwargs, **overrides}) if (s.kwargs or overrides) else cls()


def select(selection: str | None) -> list[AdapterSpec]:
    """Adapters named by a selection string: comma-separated names, family names ("torch", "jax", ...),
    globs ("keras.*"), "all" (every core adapter) or "everything" (optional extras too).
    Unknown names raise KeyError with the list of known ones."""
    import fnmatch

    if not selection or selection == "all":
        return [s for s in SPECS if s.core]
    if selection == "everything":
        return list(SPECS)
    chosen: list[AdapterSpec] = []
    for token in (t.strip() for t in selection.split(",")):
        if not token:
            continue
        matches = [s for s in SPECS if s.name == token or s.family == token or fnmatch.fnmatchcase(s.name, token)]
        if not matches:
            families = sorted({s.family for s in SPECS})
            raise KeyError(f"unknown framework or adapter {token!r}; adapters: {', '.join(BY_NAME)}; "
                           f"families: {', '.join(families)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen
