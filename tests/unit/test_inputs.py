"""Inputs are bit-for-bit reproducible: pinned checksums (tox runs this file under NumPy 1.26 and 2.x)."""
from __future__ import annotations

import numpy as np
import pytest

from conformance.core.cases import CASES, Case
from conformance.core.inputs import checksum, materialize, standard, uniform
from reference.dtypes import is_representable

# Computed once; a change here means every stored result's inputs changed: bump the results schema too.
PINNED = {
    "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0":
        "ee4de22f425083d768f55eba93dc5db64c47111334238f0e5fe1747e562d6dce",
    "f64-8x4-ax1-TE-a0.1-eps1e-05-rstats-s0":
        "836556a93a6b2d0df34c77a585477b8b037867134f4aff3c3e05a4113026f82b",
    "f16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0":
        "cc0488d70c8667ea71510c934e9495d9e313d0a04051a05481a6282784f2da37",
    "bf16-32x8x4x4-ax1-TE-a0.1-eps1e-05-s0":
        "4c83ef9c6f049dadfea8155f5adfbdbcc500d71e042d25db50e29062af306fb4",
    "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-constant-channel-s0":
        "f4c340f563d0aa946fbee88e05cce6328e777fbb98e30f7f466a77a9befb625e",
    "f32-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-outliers-s0":
        "12ff207eca423d5b7847f165b727924ccde6db182d3e295836074b72f95a5dd6",
}


@pytest.mark.parametrize("case_id", sorted(PINNED))
def test_pinned_checksums(case_id):
    assert checksum(materialize(CASES[case_id])) == PINNED[case_id], f"NumPy {np.__version__}"


def test_pinned_raw_stream_values():
    """The generator itself, independent of the case table: first values of one stream, exactly."""
    assert uniform(7, "probe", 3).tolist() == [0.13818670895732177, 0.9548869904246492, 0.28980555621913084]


def test_materialize_is_repeatable_and_exact_in_dtype():
    for case in CASES.values():
        a, b = materialize(case), materialize(case)
        assert checksum(a) == checksum(b)
        for arr in list(a.xs) + [a.gamma, a.beta, a.running_mean, a.running_var, a.dy, a.v]:
            if arr is not None:
                assert arr.dtype == np.float64
                assert is_representable(arr, case.dtype), case.id


def test_uniform_and_standard_streams_have_their_distribution():
    u = uniform(1, "dist", 200_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.all(u * 2.0**53 == np.floor(u * 2.0**53))  # multiples of 2**-53
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    z = standard(1, "dist", 200_000)
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1.0) < 0.01 and np.abs(z).max() <= 6.0
    assert not np.array_equal(uniform(1, "a", 10), uniform(1, "b", 10))
    assert not np.array_equal(uniform(1, "a", 10), uniform(2, "a", 10))


def test_hyperparameters_do_not_change_the_data():
    """Discriminating cases differ in one knob only: same seed and shape give the same arrays."""
    base = Case((4, 3, 2, 3), "float32", ("train", "eval"))
    other = base.with_(eps=1e-3, momentum=0.9)
    a, b = materialize(base), materialize(other)
    assert checksum(a) == checksum(b)


def test_channels_have_distinct_scales():
    p = materialize(Case((64, 4), "float64", ("train",)))
    stds = p.xs[0].std(axis=0)
    assert len(set(np.round(stds, 6))) == 4


def test_constant_channel_has_zero_variance():
    p = materialize(Case((4, 3, 2, 3), "float32", ("train",), dist="constant_channel"))
    assert p.xs[0][:, 0].var() == 0.0 and p.xs[0][:, 1].var() > 0


def test_the_numba_kernels_give_the_numpy_streams_bits(monkeypatch):
    """Large requests come from compiled kernels (conformance/core/inputs_kernels.py): the same values as the
    NumPy code, bit for bit, at sizes around the block size and not multiples of it."""
    pytest.importorskip("numba")
    from conformance.core import inputs

    for size in (1, 5, (1 << 15) + 3, 70001):
        monkeypatch.setattr(inputs, "FAST", 1 << 62)  # NumPy
        u0, z0 = uniform(3, "probe", size), standard(3, "probe", size)
        monkeypatch.setattr(inputs, "FAST", 1)  # numba
        u1, z1 = uniform(3, "probe", size), standard(3, "probe", size)
        assert np.array_equal(u0.view(np.int64), u1.view(np.int64)), size
        assert np.array_equal(z0.view(np.int64), z1.view(np.int64)), size


def test_without_numba_large_inputs_take_the_numpy_path(monkeypatch):
    from conformance.core import inputs

    monkeypatch.setattr(inputs, "_kernels", False)
    assert inputs._fast(1 << 20) is None
    assert uniform(7, "probe", 3).tolist() == [0.13818670895732177, 0.9548869904246492, 0.28980555621913084]


def test_a_run_generates_its_large_streams_once(tmp_path, monkeypatch):
    """The parent of a run writes the large streams it generates; a worker reads them back with the same bits
    and generates none of them. A stream the store lacks or holds damaged is generated again."""
    from conformance.core import inputs

    size = inputs.FAST + 3
    with inputs.shared_streams(tmp_path, write=True):
        u0, z0 = uniform(3, "probe/x", size), standard(3, "probe/x", size)
        assert uniform(3, "small", 5).size == 5  # small streams are not stored
    assert len(list(tmp_path.glob("*.npy"))) == 2 and not list(tmp_path.glob("*.part"))

    def generated(*args):
        raise AssertionError("generated although stored")

    with monkeypatch.context() as m:
        m.setattr(inputs, "_uniform", generated)
        m.setattr(inputs, "_standard", generated)
        with inputs.shared_streams(tmp_path):
            u1, z1 = uniform(3, "probe/x", size), standard(3, "probe/x", size)
    assert np.array_equal(u0.view(np.int64), u1.view(np.int64))
    assert np.array_equal(z0.view(np.int64), z1.view(np.int64))
    for damaged, content in zip(sorted(tmp_path.glob("*.npy")), (b"not an array", None)):
        if content is None:
            np.save(damaged, np.zeros(7))  # a valid file of the wrong shape
        else:
            damaged.write_bytes(content)
    with inputs.shared_streams(tmp_path):
        assert np.array_equal(uniform(3, "probe/x", size).view(np.int64), u0.view(np.int64))
        assert np.array_equal(standard(3, "probe/x", size).view(np.int64), z0.view(np.int64))
    assert inputs._store is None  # outside the block: neither read nor written

