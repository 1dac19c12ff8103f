"""``qinfer batch`` on the local thread pool: input formats, deterministic files, one-line errors.

The same command on Ray (files identical to these) is tested in test_integrations_ray.py.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import models
import qinfer
from qinfer.cli import main

SAMPLES_SEED = 20261124


def digits_like(n, seed=SAMPLES_SEED):
    """``n`` digits-like images [n, 1, 8, 8] float32 in [0, 1]: scikit-learn's 1797 digits repeated,
    each copy with its own brightness (x0.8 to x1.2) and Gaussian noise (sigma 0.05)."""
    from sklearn.datasets import load_digits
    x = (load_digits().images / 16.0).astype(np.float32)[:, None]
    rng = np.random.default_rng(seed)
    tiled = np.resize(x, (n,) + x.shape[1:])
    noisy = tiled * rng.uniform(0.8, 1.2, (n, 1, 1, 1)) + rng.normal(0.0, 0.05, tiled.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def int8_digits_qinf(folder):
    """The digits CNN of tests/models.py quantized to int8 (static activations) as a .qinf file."""
    try:
        d = models.digits_cnn()
    except models.ModelUnavailable as e:
        pytest.skip(str(e))
    q = qinfer.quantize(qinfer.convert(d.path), models.digits_split()[0][:128], progress=False)
    ops = q.graph.op_counts()
    assert "QConv" in ops and "QGemm" in ops and "Conv" not in ops, ops
    path = os.path.join(folder, "digits-int8.qinf")
    q.save(path)
    return path


def write_parquet(path, x, column="input", row_group_size=None, extra=None):
    """Rows of ``x`` flattened into a list<value> column (and ``extra`` plain columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    flat = x.reshape(len(x), -1)
    offsets = pa.array(np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32))
    cols = {column: pa.ListArray.from_arrays(offsets, pa.array(flat.ravel()))}
    cols.update(extra or {})
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)


def make_inputs(folder, x):
    """Split ``x`` over a.npz (plus a labels array the model does not read), b.npy and c.parquet (two
    row groups); returns the sample ranges of the output files qinfer batch writes for them."""
    os.makedirs(folder, exist_ok=True)
    n = len(x)
    a, b = n * 5 // 12, n * 9 // 12
    np.savez(os.path.join(folder, "a.npz"), input=x[:a], labels=np.arange(a))
    np.save(os.path.join(folder, "b.npy"), x[a:b])
    half = (n - b + 1) // 2
    write_parquet(os.path.join(folder, "c.parquet"), x[b:], row_group_size=half)
    return {"a.npz": (0, a), "b.npz": (a, b), "c-00000.npz": (b, b + half), "c-00001.npz": (b + half, n)}


def read_dir(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def int8_qinf(tmp_path_factory):
    return int8_digits_qinf(str(tmp_path_factory.mktemp("model")))


def _batch(*args):
    return main(["batch", *map(str, args)])


def test_local_batch_writes_one_session_outputs(int8_qinf, tmp_path):
    x = digits_like(2400)
    parts = make_inputs(tmp_path / "in", x)
    assert _batch(int8_qinf, "--input", tmp_path / "in", "--output", tmp_path / "out", "--batch-size", 100) == 0
    assert sorted(os.listdir(tmp_path / "out")) == sorted(parts)
    (expected,) = qinfer.InferenceSession(int8_qinf, num_threads=1).run(None, {"input": x})
    for name, (lo, hi) in parts.items():
        with np.load(tmp_path / "out" / name) as z:
            assert z.files == ["logits"]
            assert z["logits"].dtype == np.float32
            assert np.array_equal(z["logits"], expected[lo:hi]), name


def test_files_do_not_depend_on_workers_threads_or_runs(int8_qinf, tmp_path):
    parts = make_inputs(tmp_path / "in", digits_like(1500, seed=3))
    runs = [("1", "2"), ("2", "1"), ("3", "1")]
    for i, (actors, threads) in enumerate(runs):
        assert _batch(int8_qinf, "--input", tmp_path / "in", "--output", tmp_path / f"out{i}", "--batch-size", 64,
                      "--actors", actors, "--threads", threads) == 0
    first = read_dir(tmp_path / "out0")
    assert sorted(first) == sorted(parts)
    for i in range(1, len(runs)):
        assert read_dir(tmp_path / f"out{i}") == first
    # int8 rows are computed on their own: another batch size gives the same outputs too
    assert _batch(int8_qinf, "--input", tmp_path / "in", "--output", tmp_path / "other", "--batch-size", 500) == 0
    assert read_dir(tmp_path / "other") == first


def test_float_model_same_batches_same_bytes(tmp_path):
    """Float results can move in the last bits with the batch size; the plan fixes the batches, so the
    number of workers and threads does not change a byte."""
    try:
        onnx_path = models.digits_cnn().path
    except models.ModelUnavailable as e:
        pytest.skip(str(e))
    _npy_dir(str(tmp_path / "in"), digits_like(700, seed=5))
    for out, actors, threads in (("one", 1, 2), ("two", 2, 1)):
        assert _batch(onnx_path, "--input", tmp_path / "in", "--output", tmp_path / out, "--batch-size", 33,
                      "--actors", actors, "--threads", threads) == 0
    assert read_dir(tmp_path / "one") == read_dir(tmp_path / "two")


def test_single_file_input_and_fixed_zip_timestamp(int8_qinf, tmp_path):
    x = digits_like(300, seed=9)
    write_parquet(tmp_path / "only.parquet", x)
    assert _batch(int8_qinf, "--input", tmp_path / "only.parquet", "--output", tmp_path / "out") == 0
    import zipfile
    with zipfile.ZipFile(tmp_path / "out" / "only-00000.npz") as z:
        assert [i.date_time for i in z.infolist()] == [(1980, 1, 1, 0, 0, 0)]
    with np.load(tmp_path / "out" / "only-00000.npz") as z:
        (expected,) = qinfer.InferenceSession(int8_qinf).run(None, {"input": x})
        assert np.array_equal(z["logits"], expected)
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".")]   # no temporary left


# ------------------------------------------------------------------------------------------ errors

def _npy_dir(folder, array):
    """``folder``/x.npy holding ``array``."""
    os.makedirs(folder)
    np.save(os.path.join(folder, "x.npy"), array)
    return folder, "x.npy"


FILES_NOT_SAMPLES = {"unreadable npy": ("x.npy", b"\x00not numpy at all"),
                     "unreadable npz": ("x.npz", b"PK\x03\x04 truncated"),
                     "unreadable parquet": ("x.parquet", b"PAR1 but nothing else"),
                     "empty dir": ("notes.txt", b"no samples here")}


def _case(kind, d):
    """(command arguments after MODEL, text the one error line must contain) for a bad input."""
    good = digits_like(20, seed=1)
    inp = str(d / "in")
    if kind == "missing input name":
        os.makedirs(inp)
        np.savez(os.path.join(inp, "a.npz"), image=good)
        return ["--input", inp], ["a.npz", "no array named 'input'", "'image'"]
    if kind == "wrong shape":
        _npy_dir(inp, np.zeros((4, 1, 8, 9), np.float32))
        return ["--input", inp], ["x.npy", "input 'input'", "dimension 3 must be 8"]
    if kind == "wrong rank":
        _npy_dir(inp, good.reshape(20, 64))
        return ["--input", inp], ["x.npy", "expected rank 4", "[20, 64]"]
    if kind == "wrong dtype":
        _npy_dir(inp, good.astype(np.float64))
        return ["--input", inp], ["x.npy", "expected dtype float32, got float64"]
    if kind == "zero samples":
        _npy_dir(inp, np.zeros((0, 1, 8, 8), np.float32))
        return ["--input", inp], ["x.npy", "0 samples"]
    if kind in FILES_NOT_SAMPLES:
        name, data = FILES_NOT_SAMPLES[kind]
        os.makedirs(inp)
        open(os.path.join(inp, name), "wb").write(data)
        if kind == "empty dir":
            return ["--input", inp], [inp, "no .npy, .npz or .parquet files"]
        return ["--input", inp], [name, "cannot read"]
    if kind == "no such input":
        return ["--input", str(d / "nowhere")], ["nowhere", "no such file or directory"]
    if kind == "parquet missing column":
        os.makedirs(inp)
        write_parquet(os.path.join(inp, "p.parquet"), good, column="pixels")
        return ["--input", inp], ["p.parquet", "no column named 'input'", "pixels"]
    if kind == "parquet wrong values":
        os.makedirs(inp)
        write_parquet(os.path.join(inp, "p.parquet"), good.astype(np.float64))
        return ["--input", inp], ["p.parquet", "column 'input'", "expected float32 values"]
    if kind == "parquet short row":
        import pyarrow as pa
        import pyarrow.parquet as pq
        os.makedirs(inp)
        rows = [r.ravel().tolist() for r in good]
        rows[7] = rows[7][:63]
        pq.write_table(pa.table({"input": pa.array(rows, type=pa.list_(pa.float32()))}),
                       os.path.join(inp, "p.parquet"))
        return ["--input", inp], ["p.parquet", "row 7 holds 63 values", "need 64"]
    if kind == "output is the input dir":
        _npy_dir(inp, good)
        return ["--input", inp, "--output", inp], ["--output", "overwrite"]
    if kind == "bad batch size":
        _npy_dir(inp, good)
        return ["--input", inp, "--batch-size", "0"], ["--batch-size", "positive"]
    raise AssertionError(kind)


ERROR_CASES = ["missing input name", "wrong shape", "wrong rank", "wrong dtype", "zero samples", "unreadable npy",
               "unreadable npz", "unreadable parquet", "empty dir", "no such input", "parquet missing column",
               "parquet wrong values", "parquet short row", "output is the input dir", "bad batch size"]


@pytest.mark.parametrize("kind", ERROR_CASES)
def test_bad_input_is_one_line_naming_the_file(kind, int8_qinf, tmp_path, capsys):
    args, needles = _case(kind, tmp_path)
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    assert main(["batch", int8_qinf, *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qinfer batch: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    if os.path.isdir(tmp_path / "out"):
        assert os.listdir(tmp_path / "out") == []    # nothing half-written


def test_missing_model_names_it(tmp_path, capsys):
    _npy_dir(str(tmp_path / "in"), digits_like(4))
    assert main(["batch", str(tmp_path / "nope.qinf"), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.qinf" in err[0]


def test_command_exit_codes(int8_qinf, tmp_path):
    """The installed command: 0 and a summary line on success, 1 and one line (no traceback) on error."""
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "qinfer.cli", "batch", int8_qinf, *map(str, args)],
                              capture_output=True, text=True, timeout=120)
    _npy_dir(str(tmp_path / "good"), digits_like(50))
    r = cli("--input", tmp_path / "good", "--output", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "wrote 1 files (50 samples)" in r.stdout
    _npy_dir(str(tmp_path / "bad"), np.zeros((5, 1, 8, 7), np.float32))
    r = cli("--input", tmp_path / "bad", "--output", tmp_path / "out2")
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "x.npy" in r.stderr and "dimension 3 must be 8" in r.stderr


def test_ray_address_without_ray_says_how_to_install(int8_qinf, tmp_path, capsys, monkeypatch):
    _npy_dir(str(tmp_path / "in"), digits_like(10))
    monkeypatch.setitem(sys.modules, "ray", None)    # import ray -> ImportError, as where it is not installed
    assert main(["batch", int8_qinf, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--ray-address", "local"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Ray is not installed" in err[0] and "pip install 'qinfer[ray]'" in err[0]
