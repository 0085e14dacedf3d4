"""Runtimes the suite cannot drive in-process (TensorFlow.js under Node, MATLAB): their declared conventions,
and the adapter that hands the engine what their runner observed.

The runner (conformance/runners/) ran the case outside Python and wrote an observation file;
`conformance.execution.import_` reads and validates it and gives it to `ImportedAdapter`, whose `run()` returns it.
Everything else (oracle, bounds, verdicts, registry, diagnosis, report) is the engine's, exactly as for an
in-process adapter. The conventions below are the suite's declarations, read in each runtime's own source or
documentation; the runner reports only what it computed and its version.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from reference import QUANTITIES, Convention, Problem

from .base import Adapter, Observation, Precision

_NOT_EXPOSED = frozenset({"batch_mean", "batch_var", "num_batches_tracked"})


@dataclass(frozen=True)
class Runtime:
    """One API of an outside runtime, as the suite declares it."""

    name: str  # adapter name in records: "tfjs.layers.batchNormalization"
    runner: str  # exchange runner that runs it: "node", "matlab"
    framework: str  # what its version is: "@tensorflow/tfjs"
    api: str
    convention: Convention
    source: str  # where the convention was read
    dtypes: frozenset[str]
    quantities: frozenset[str]
    channel_axes: str = "any"
    max_rank: int = 5
    single_element_training: str = "computes"
    missing: str = ""  # what is missing while no observation of it has been imported
    not_run: str = ""  # how to get its observations
    limits: dict[str, str] = field(default_factory=dict)  # feature -> why it is unsupported


TFJS = Runtime(
    name="tfjs.layers.batchNormalization",
    runner="node",
    framework="@tensorflow/tfjs",
    api="tf.layers.batchNormalization (TensorFlow.js, CPU backend)",
    # tfjs-layers/src/layers/normalization.ts (tensorflow/tfjs 0fc04d9): momentum 0.99 and epsilon 1e-3 at
    # lines 282-283; the moving average writes orig - (orig - value) * (1 - momentum) at lines 378-381, i.e.
    # momentum is the weight on the old value; the batch statistics come from tfc.moments (line 93/123),
    # whose variance is mean(square(x - mean)) (tfjs-core/src/ops/moments.ts line 55-57): biased, two-pass,
    # and the same biased variance feeds the moving variance. The CPU kernel normalizes with
    # (x - mean) * scale / sqrt(var + eps) (tfjs-backend-cpu/src/kernels/BatchNorm.ts line 73).
    convention=Convention(momentum_form="weight_on_old", default_momentum=0.99, default_eps=1e-3,
                          running_var="biased"),
    source="tfjs-layers/src/layers/normalization.ts lines 282-283, 378-393; tfjs-core/src/ops/moments.ts "
           "lines 55-57; tfjs-backend-cpu/src/kernels/BatchNorm.ts line 73",
    dtypes=frozenset({"float32"}),
    quantities=frozenset(QUANTITIES) - _NOT_EXPOSED,
    max_rank=4,
    missing="no TensorFlow.js observation imported",
    not_run="bnconform export --runner node --out DIR; cd DIR && npm ci && node run.js .; "
            "bnconform import DIR (tox -e tfjs does all three)",
    limits={"rank": "tf.layers.batchNormalization implements ranks 2-4 only (normalization.ts line 65 throws "
                    "NotImplementedError)",
            "dtype": "TensorFlow.js computes floating point in float32 only"},
)

_MATLAB_NOT_RUN = ("not run here — run `matlab -batch` on the exported folder "
                   "(`bnconform export --runner matlab`), then `bnconform import`")
_MATLAB_DOC = ("MathWorks documentation: batchnorm (https://www.mathworks.com/help/deeplearning/ref/"
               "dlarray.batchnorm.html: 'MeanDecay'/'VarianceDecay' default 0.1, s_n = phi*s_x + "
               "(1-phi)*s_n; 'Epsilon' default 1e-5), batchNormalizationLayer (https://www.mathworks.com/"
               "help/deeplearning/ref/nnet.cnn.layer.batchnormalizationlayer.html); biased batch variance "
               "as in the users' worked example (var(X,1,...)); not verified against a MATLAB run")
# Decay phi is the weight on the new mini-batch statistic (the documented update). Whether the returned and
# stored variance is the biased sigmaSq of the batch (declared here, from the worked example) or an unbiased
# estimate is what the first imported MATLAB run decides: diagnosis names "unbiased" if it is.
_MATLAB_CONVENTION = Convention(momentum_form="weight_on_new", default_momentum=0.1, default_eps=1e-5,
                                running_var="biased")
MATLAB_FUNCTION = Runtime(
    name="matlab.batchnorm", runner="matlab", framework="MATLAB",
    api="batchnorm (dlarray; 5 inputs/3 outputs in training, 5 inputs/1 output in inference)",
    convention=_MATLAB_CONVENTION, source=_MATLAB_DOC, dtypes=frozenset({"float64", "float32"}),
    quantities=frozenset(QUANTITIES) - {"num_batches_tracked", "batch_mean", "batch_var"},
    missing="MATLAB with Deep Learning Toolbox: not run here", not_run=_MATLAB_NOT_RUN)
MATLAB_NETWORK = Runtime(
    name="matlab.dlnetwork", runner="matlab", framework="MATLAB",
    api="dlnetwork forward (training) / predict (inference) with batchNormalizationLayer",
    convention=_MATLAB_CONVENTION, source=_MATLAB_DOC, dtypes=frozenset({"float64", "float32"}),
    quantities=frozenset(QUANTITIES) - {"num_batches_tracked", "batch_mean", "batch_var"},
    missing="MATLAB with Deep Learning Toolbox: not run here", not_run=_MATLAB_NOT_RUN)

RUNTIMES: dict[str, Runtime] = {r.name: r for r in (TFJS, MATLAB_FUNCTION, MATLAB_NETWORK)}
RUNNERS: dict[str, tuple[str, ...]] = {}
for _r in RUNTIMES.values():
    RUNNERS[_r.runner] = RUNNERS.get(_r.runner, ()) + (_r.name,)


class ImportedAdapter(Adapter):
    """An outside runtime's API whose observations were computed by its exchange runner.

    `observations` maps case id -> Observation (set by the importer); `version` is what the runner reported.
    A stand-in (a test double of the runtime, e.g. Octave with a stand-in `batchnorm`) gets its own name
    and framework, so its verdicts can never be read as the real runtime's."""

    def __init__(self, runtime: Runtime, version: str, observations: dict[str, Observation],
                 standin: str | None = None):
        self.runtime = runtime
        self.name = runtime.name if not standin else f"{runtime.name}[stand-in:{standin}]"
        self.framework = runtime.framework if not standin else f"{standin} stand-in for {runtime.framework}"
        self.api = runtime.api if not standin else f"STAND-IN, not {runtime.framework}: {runtime.api}"
        self.convention = runtime.convention
        self.dtypes = runtime.dtypes
        self.channel_axes = runtime.channel_axes
        self.quantities = runtime.quantities
        self.single_element_training = runtime.single_element_training
        self.source = runtime.source
        self.version = version
        self.observations = observations

    def versions(self) -> dict[str, str]:
        return {self.framework: self.version}

    def precision(self, problem: Problem) -> Precision:
        return Precision.uniform(problem.dtype)

    def unsupported(self, problem: Problem) -> str | None:
        if len(problem.shape) > self.runtime.max_rank:
            return self.runtime.limits.get("rank", f"{self.api} takes rank <= {self.runtime.max_rank}")
        if problem.dtype not in self.dtypes:
            return self.runtime.limits.get("dtype", f"{self.api} does not support {problem.dtype}")
        obs = self.observations.get(problem.label)
        if obs is not None and obs.facts.get("skip"):
            return obs.facts["skip"]
        return super().unsupported(problem)

    def run(self, problem: Problem) -> Observation:
        return self.observations[problem.label]

    def native_config(self, problem: Problem) -> dict[str, object]:
        alpha, eps = problem.effective(self.convention)
        return {"momentum": self.convention.canonical_to_native(alpha), "epsilon": eps}
