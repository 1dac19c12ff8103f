"""The qinfer command: exit codes, one-line errors, convert / run / inspect / info."""
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

import qinfer


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qinfer.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture
def small_onnx(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.ravel())])
    p = tmp_path / "mlp.onnx"
    p.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return p


def test_convert_run_inspect(small_onnx, tmp_path):
    out = tmp_path / "mlp.qinf"
    r = _cli("convert", str(small_onnx), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.exists() and "wrote" in r.stdout
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = _cli("run", str(out), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "o.npz"))
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "o.npz") as z:
        (y,) = qinfer.InferenceSession(str(small_onnx)).run(None, {"x": x})
        np.testing.assert_array_equal(z["y"], y)
    r = _cli("inspect", str(out))
    assert r.returncode == 0 and "MatMul" in r.stdout


def test_info_prints_isa():
    r = _cli("info")
    assert r.returncode == 0, r.stderr
    assert "isa" in r.stdout.lower()


@pytest.mark.parametrize("args,needle", [
    (["convert", "nope.onnx"], "nope.onnx"),
    (["inspect", "nope.qinf"], "nope.qinf"),
    (["run", "nope.qinf", "--input", "x=a.npy"], "nope.qinf"),
])
def test_user_errors_exit_1_with_one_line(args, needle, tmp_path):
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_bad_feed_and_garbage_file(small_onnx, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    r = _cli("run", str(small_onnx), "--input", f"x={tmp_path / 'bad.npy'}")
    assert r.returncode == 1 and "dimension 1 must be 4" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.qinf"
    junk.write_bytes(b"\x89QINF" + b"\x00" * 40)
    r = _cli("inspect", str(junk))
    assert r.returncode == 1 and "junk.qinf" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_quantize_then_evaluate_on_the_bundled_data(tmp_path):
    """The README's first quantize + evaluate, on the demo model and data shipped in the package."""
    import os
    data = os.path.join(os.path.dirname(qinfer.__file__), "data")
    out = tmp_path / "m.qinf"
    r = _cli("quantize", os.path.join(data, "digits_cnn.onnx"), "--calib", os.path.join(data, "digits_calib.npz"),
             "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.exists() and "layers quantized" in r.stdout
    r = _cli("evaluate", str(out), "--reference", os.path.join(data, "digits_cnn.onnx"),
             "--data", os.path.join(data, "digits_test.npz"))
    assert r.returncode == 0, r.stderr
    assert "450 samples" in r.stdout
    diff = [line for line in r.stdout.splitlines() if line.strip().startswith("difference")]
    assert diff, r.stdout
    acc_pt = float(diff[0].split()[1])     # accuracy points lost (signed) against float
    assert acc_pt >= -0.5, r.stdout
