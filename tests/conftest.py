from adapters.jax_common import set_xla_flags

# before any test imports jax: the JAX adapters' sync path needs its logical CPU devices (adapters/jax_common.py)
set_xla_flags()

pytest_plugins = ["conformance.execution.plugin"]
