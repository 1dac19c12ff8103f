"""qinfer on Ray Data: the map_batches predictor, ``predict``, and ``qinfer batch --ray-address``.

The Ray tests share one 2-CPU Ray instance on the loopback interface, started once for the module
and shut down at its end; they are skipped only where Ray cannot be imported.
"""
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

import qinfer
from qinfer.cli import main
from qinfer.integrations.ray import QinferPredictor, RayNotInstalledError, predict
from test_cli_batch import digits_like, int8_digits_qinf, make_inputs, read_dir, write_parquet

N_SAMPLES = 12_000


@pytest.fixture(scope="module")
def int8_qinf(tmp_path_factory):
    return int8_digits_qinf(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def samples():
    return digits_like(N_SAMPLES)


@pytest.fixture(scope="module")
def ray_cluster():
    """``ray``, initialized: 2 CPUs, no dashboard, every server on 127.0.0.1."""
    with pytest.MonkeyPatch.context() as mp:
        # Ray's single-machine mode (as on macOS): node address and listening sockets on loopback;
        # the variable reaches the Ray processes, the constant covers a ray imported before it was set
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray
            import ray.data
        except ImportError as e:
            pytest.skip(f"Ray cannot be imported ({e}); pip install 'qinfer[ray]'")
        mp.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        ctx = ray.data.DataContext.get_current()
        mp.setattr(ctx, "enable_progress_bars", False)
        mp.setattr(ctx, "execution_no_progress_timeout_s", 120)   # a stuck pipeline fails, not hangs
        try:
            assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
            yield ray
        finally:
            ray.shutdown()


def _collect(ds, key, *columns):
    """The dataset's ``columns``, rows sorted by ``key`` (Ray does not promise an order)."""
    parts = {c: [] for c in (key,) + columns}
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for c in parts:
            parts[c].append(np.asarray(b[c]))
    cols = {c: np.concatenate(v) for c, v in parts.items()}
    order = np.argsort(cols[key], kind="stable")
    return {c: v[order] for c, v in cols.items()}


# ------------------------------------------------------------------------------------------ Ray

@pytest.mark.slow
def test_map_batches_equals_one_session(ray_cluster, int8_qinf, samples):
    ray = ray_cluster
    n = len(samples)
    ds = ray.data.from_items([{"id": i, "image": samples[i]} for i in range(n)])
    out = ds.map_batches(QinferPredictor, batch_size=500, batch_format="numpy", num_cpus=1,
                         compute=ray.data.ActorPoolStrategy(size=2),
                         fn_constructor_kwargs=dict(model_path=int8_qinf, num_threads=1,
                                                    input_columns={"input": "image"}, keep_columns=["id"]))
    got = _collect(out, "id", "logits")
    assert np.array_equal(got["id"], np.arange(n))          # every sample once
    (expected,) = qinfer.InferenceSession(int8_qinf, num_threads=2).run(None, {"input": samples})
    assert got["logits"].dtype == np.float32 and got["logits"].shape == (n, 10)
    assert np.array_equal(got["logits"], expected)
    assert len(set(expected.argmax(1)[:1797])) == 10       # a real classifier, not a constant


@pytest.mark.slow
def test_predict_reads_flattened_parquet_rows(ray_cluster, int8_qinf, samples, tmp_path):
    x = samples[:3000]
    import pyarrow as pa
    os.makedirs(tmp_path / "pq")
    for i, lo in enumerate(range(0, len(x), 1000)):
        write_parquet(tmp_path / "pq" / f"part-{i}.parquet", x[lo:lo + 1000], column="pixels",
                      extra={"sample_id": pa.array(np.arange(lo, lo + 1000))})
    ds = ray_cluster.data.read_parquet(str(tmp_path / "pq"))
    # one 1-CPU actor: the read tasks need the other CPU (a pool holding every CPU would starve them)
    out = predict(ds, int8_qinf, batch_size=256, actors=1, input_columns={"input": "pixels"},
                  output_columns={"logits": "scores"}, keep_columns=["sample_id"])
    got = _collect(out, "sample_id", "scores")
    assert np.array_equal(got["sample_id"], np.arange(len(x)))
    (expected,) = qinfer.InferenceSession(int8_qinf).run(None, {"input": x})
    assert np.array_equal(got["scores"], expected)


@pytest.mark.slow
def test_cli_batch_local_and_ray_write_identical_files(ray_cluster, int8_qinf, samples, tmp_path):
    parts = make_inputs(tmp_path / "in", samples)
    common = ["batch", int8_qinf, "--input", str(tmp_path / "in"), "--batch-size", "128"]
    assert main(common + ["--output", str(tmp_path / "local"), "--threads", "2"]) == 0
    assert main(common + ["--output", str(tmp_path / "ray"), "--ray-address", "local", "--actors", "2",
                          "--threads", "1"]) == 0
    local, on_ray = read_dir(tmp_path / "local"), read_dir(tmp_path / "ray")
    assert sorted(local) == sorted(parts)
    assert on_ray == local
    (expected,) = qinfer.InferenceSession(int8_qinf).run(None, {"input": samples})
    for name, (lo, hi) in parts.items():
        with np.load(tmp_path / "ray" / name) as z:
            assert np.array_equal(z["logits"], expected[lo:hi]), name
    # another process joins this cluster by its address, as a driver on a cluster's head node would
    address = ray_cluster.get_runtime_context().gcs_address
    r = subprocess.run([sys.executable, "-m", "qinfer.cli", *common, "--output", str(tmp_path / "joined"),
                        "--ray-address", address, "--actors", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_dir(tmp_path / "joined") == local


@pytest.mark.slow
def test_cli_batch_on_ray_reports_actor_errors_in_one_line(ray_cluster, int8_qinf, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [r.ravel().tolist() for r in digits_like(300, seed=2)]
    rows[211] = rows[211][:60]             # found only when an actor reads the row group
    os.makedirs(tmp_path / "in")
    pq.write_table(pa.table({"input": pa.array(rows, type=pa.list_(pa.float32()))}), tmp_path / "in" / "p.parquet")
    assert main(["batch", int8_qinf, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--ray-address", "local", "--actors", "2", "--threads", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("qinfer batch: error: ") and "Traceback" not in "\n".join(err)
    assert "p.parquet" in err[-1] and "row 211 holds 60 values" in err[-1]
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.slow
def test_cli_batch_asks_no_more_cpus_than_the_cluster_has(ray_cluster, int8_qinf, samples, tmp_path, capsys):
    make_inputs(tmp_path / "in", samples[:100])
    assert main(["batch", int8_qinf, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--ray-address", "local", "--actors", "3", "--threads", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need 3 CPUs" in err[0] and "has 2" in err[0]


# ------------------------------------------------------------------------------------------ no Ray needed

def test_import_qinfer_never_imports_ray():
    code = ("import sys, qinfer, qinfer.cli, qinfer.integrations.ray, qinfer.integrations.batch; "
            "qinfer.cli.build_parser(); print(sorted(m for m in ('ray', 'pyarrow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_predict_without_ray_is_a_qinfer_error(int8_qinf, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayNotInstalledError, match=r"pip install 'qinfer\[ray\]'") as e:
        predict(None, int8_qinf)
    assert isinstance(e.value, qinfer.QinferError)


def test_predict_checks_before_any_actor_starts(int8_qinf, tmp_path):
    pytest.importorskip("ray.data", reason="Ray is not installed")
    with pytest.raises(qinfer.InvalidInputError, match=r"input_columns names \['image'\].*inputs are \['input'\]"):
        predict(None, int8_qinf, input_columns={"image": "pixels"})
    with pytest.raises(qinfer.InvalidInputError, match=r"output_columns names \['probs'\]"):
        predict(None, int8_qinf, output_columns={"probs": "p"})
    with pytest.raises(qinfer.ModelFormatError, match="nope.qinf"):
        predict(None, tmp_path / "nope.qinf")
    with pytest.raises(qinfer.QinferError, match="actors must be a positive integer"):
        predict(None, int8_qinf, actors=0)


def test_predictor_on_plain_batches(int8_qinf, samples):
    """The predictor is a plain callable: flattened rows and arrays of rows are reshaped to the input."""
    x = samples[:64]
    (expected,) = qinfer.InferenceSession(int8_qinf).run(None, {"input": x})
    pred = QinferPredictor(int8_qinf, input_columns={"input": "px"}, output_columns={"logits": "y"},
                           keep_columns=["key"])
    out = pred({"px": x.reshape(64, 64), "key": np.arange(64) * 3})
    assert sorted(out) == ["key", "y"] and np.array_equal(out["key"], np.arange(64) * 3)
    assert np.array_equal(out["y"], expected)
    rows = np.empty(64, dtype=object)
    rows[:] = list(x.reshape(64, 64))              # how Ray hands over a column of lists
    assert np.array_equal(pred({"px": rows, "key": np.zeros(64)})["y"], expected)
    with pytest.raises(qinfer.InvalidInputError, match=r"reads column 'px'.*columns are \['image'\]"):
        pred({"image": x})
    with pytest.raises(qinfer.InvalidInputError, match="dimension 3 must be 8"):
        pred({"px": np.zeros((2, 1, 8, 9), np.float32), "key": np.zeros(2)})
    with pytest.raises(qinfer.InvalidInputError, match="batch_format='numpy'"):
        pred([x])


def test_predictor_pickles_as_path_and_options(int8_qinf, samples):
    pred = QinferPredictor(int8_qinf, num_threads=2, keep_columns=["id"])
    blob = pickle.dumps(pred)
    assert len(blob) < os.path.getsize(int8_qinf) / 10       # no weights, no session
    assert b"digits-int8.qinf" in blob
    clone = pickle.loads(blob)
    assert clone.session is not pred.session and clone.session.num_threads == 2
    batch = {"input": samples[:32], "id": np.arange(32)}
    assert np.array_equal(clone(batch)["logits"], pred(batch)["logits"])


def test_fixed_batch_model_runs_in_slices(tmp_path):
    """A model exported for batch 1 takes batches of any size, one row at a time."""
    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 7
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.ravel())])
    path = tmp_path / "fixed.qinf"
    qinfer.convert(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])).save(path)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = QinferPredictor(path)({"x": x})["y"]
    sess = qinfer.InferenceSession(str(path))
    assert np.array_equal(out, np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(5)]))
