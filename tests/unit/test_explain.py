"""`bnconform explain` names what a user's computation was (the StackOverflow example), and bad input is one
line on stderr with exit status 2."""
from __future__ import annotations

import numpy as np
import pytest

from conformance.cli import main

X = np.stack([np.eye(2, 4).reshape(2, 2, 2), np.arange(8).reshape(2, 2, 2)])
Y_PRINTED = ("[[[[0.1110,-0.9749],[-0.7771,-0.9749]],[[-0.7771,-0.6358],[-0.7771,-0.9749]]],"
             "[[[-0.7771,-0.6358],[0.9991,0.0424]],[[2.7753,0.7206],[4.5515,1.3988]]]]")


def test_stackoverflow_example_is_broadcast_along_the_last_axis_with_the_unbiased_variance(tmp_path, capsys):
    np.save(tmp_path / "x.npy", X)
    status = main(["explain", "--x", str(tmp_path / "x.npy"), "--y", Y_PRINTED, "--eps", "1e-8", "--digits", "4"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "broadcast along the last axis" in out and "right per-channel" in out
    assert "unbiased variance" in out


def test_a_standard_batchnorm_is_recognized(tmp_path, capsys):
    x = np.arange(24.0).reshape(4, 3, 2) % 7
    mu, var = x.mean(axis=(0, 2), keepdims=True), x.var(axis=(0, 2), keepdims=True)
    y = (x - mu) / np.sqrt(var + 1e-5)
    np.savetxt(tmp_path / "y.csv", y.reshape(4, -1), delimiter=",")
    np.savez(tmp_path / "io.npz", x=x, y=y)
    assert main(["explain", "--x", str(tmp_path / "io.npz"), "--y", str(tmp_path / "io.npz")]) == 0
    assert "standard BatchNorm" in capsys.readouterr().out


def test_an_eps_nobody_listed_is_estimated(capsys):
    x = np.arange(24.0).reshape(4, 3, 2) % 5 * 0.01
    mu, var = x.mean(axis=(0, 2), keepdims=True), x.var(axis=(0, 2), keepdims=True)
    y = (x - mu) / np.sqrt(var + 3e-4)
    assert main(["explain", "--x", str(x.tolist()), "--y", str(y.tolist()), "--dtype", "float64"]) == 0
    assert "eps is 0.0003" in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["--x", "[[1, 2], [3, 4]]", "--y", "[[1, 2, 3], [3, 4, 5]]"], "has shape"),
    (["--x", "/nonexistent/x.npy", "--y", "[[1, 2], [3, 4]]"], "no such file"),
    (["--x", "[[1, 2], [3, NaN]]", "--y", "[[1, 2], [3, 4]]"], "non-finite"),
    (["--x", "[[1, 2], [3, 4]]", "--y", "[[1, 2], [3, oops]]"], "cannot read"),
    (["--x", "[[1, 2], [3, 4]]", "--y", "[[1, 2], [3, 4]]", "--eps", "nan"], "eps"),
    (["--x", "[[1, 2], [3, 4]]", "--y", "[[1, 2], [3, 4]]", "--digits", "-3"], "digits"),
])
def test_bad_input_is_one_line_and_exit_2(argv, says, capsys, tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_text("not an npy file")
    assert main(["explain"] + argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    bad.write_text("not an npy file")
    assert main(["explain", "--x", str(bad), "--y", "[[1, 2], [3, 4]]"]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and err.count("\n") == 1, err
