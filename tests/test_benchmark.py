"""``qinfer benchmark``: the demo end to end, SPEC section 4 JSON, --compare, --plot, the variants
plug-in, the harness pieces, and one-line errors."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import qinfer
from qinfer import benchmark as qb
from qinfer.runtime import cpu

NUM = (int, float)


def _cli(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "qinfer.cli", "benchmark", *args], capture_output=True,
                          text=True, timeout=120, env=e)


# ------------------------------------------------------------------------- SPEC section 4 schema

LATENCY = {"p50": NUM, "p90": NUM, "p99": NUM, "mean": NUM, "min": NUM}
ROW = {"model": str, "variant": str, "batch": int, "threads": int, "latency_ms": LATENCY,
       "throughput_per_s": NUM, "peak_rss_mb": NUM, "model_bytes": int,
       "accuracy": {"metric": str, "value": NUM}}
SCHEMA = {"qinfer_version": str, "machine": {"cpu": str, "isa": str, "cores": int}, "results": [ROW]}


def check_schema(obj, schema, where="$"):
    """Keys and types of SPEC section 4 (extra keys allowed); raises AssertionError naming the path."""
    if isinstance(schema, dict):
        assert isinstance(obj, dict), f"{where}: expected an object, got {type(obj).__name__}"
        for k, sub in schema.items():
            assert k in obj, f"{where}: missing key {k!r}"
            check_schema(obj[k], sub, f"{where}.{k}")
    elif isinstance(schema, list):
        assert isinstance(obj, list) and obj, f"{where}: expected a non-empty list"
        for i, item in enumerate(obj):
            check_schema(item, schema[0], f"{where}[{i}]")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        ok = isinstance(obj, types) and not isinstance(obj, bool)
        assert ok, f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {obj!r}"


def check_report(doc):
    check_schema(doc, SCHEMA)
    assert doc["qinfer_version"] == qinfer.__version__
    assert doc["machine"]["isa"] == qb.JSON_ISA[cpu.isa()]   # SPEC section 4 spelling
    assert doc["machine"]["cores"] >= 1
    for r in doc["results"]:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"], lat
        assert r["model_bytes"] > 0 and r["batch"] >= 1 and r["threads"] >= 1
        assert r["peak_rss_mb"] > 0
        assert r["accuracy"]["metric"] in ("accuracy", "top1_agreement", "cosine_similarity")
        assert 0.0 <= r["accuracy"]["value"] <= 1.0 + 1e-9


def _one_error_line(r):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qinfer benchmark: error: "), r.stderr
    return lines[0]


def _table_rows(stdout):
    """{variant: line} of the printed table."""
    return {line.split()[0]: line for line in stdout.splitlines()
            if line.split() and line.split()[0] in qb.ALL_VARIANTS + (qb.ORT_VARIANT,)}


# ----------------------------------------------------------------------------------- end to end

def test_demo_prints_table_with_real_accuracy(tmp_path):
    out = tmp_path / "demo.json"
    r = _cli("--iterations", "20", "--warmup", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rows = _table_rows(r.stdout)
    assert "float" in rows and "test acc" in rows["float"], r.stdout
    doc = json.loads(out.read_text())
    check_report(doc)
    float_row = next(x for x in doc["results"] if x["variant"] == "float")
    assert float_row["accuracy"]["metric"] == "accuracy"
    assert float_row["accuracy"]["value"] > 0.9
    assert float_row["accuracy"]["samples"] == 450
    assert float_row["iterations"] == 20
    if not hasattr(qinfer, "quantize"):   # the table shows only what is built, and says what is not
        assert set(rows) == {"float"}
        assert "int8, int4, sparse-int8 not built yet" in r.stdout
    else:
        assert "int8" in rows


def test_compare_onnxruntime_json_schema(tmp_path, resnet18_onnx):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "r.json"
    # the ResNet-18-shaped ONNX at 64x64 keeps the test fast; the schema does not depend on size
    r = _cli(resnet18_onnx, "--compare", "onnxruntime", "--iterations", "3", "--warmup", "1",
             "--input-shape", "input:1x3x64x64", "--threads", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert set(_table_rows(r.stdout)) == {"float", qb.ORT_VARIANT} or hasattr(qinfer, "quantize")
    doc = json.loads(out.read_text())
    check_report(doc)
    by_variant = {x["variant"]: x for x in doc["results"]}
    ort_row = by_variant[qb.ORT_VARIANT]
    assert ort_row["model_bytes"] == os.path.getsize(resnet18_onnx)
    assert ort_row["accuracy"]["metric"] == "top1_agreement"       # no labels: agreement with float
    assert by_variant["float"]["input_shapes"] == {"input": [1, 3, 64, 64]}
    assert all(x["threads"] == 1 and x["iterations"] == 3 for x in doc["results"])


def test_plot_png_has_one_point_per_row(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is an optional extra (pip install matplotlib)")
    pytest.importorskip("onnxruntime")
    png, out = tmp_path / "p.png", tmp_path / "p.json"
    r = _cli("--iterations", "10", "--warmup", "1", "--compare", "onnxruntime", "--plot", str(png),
             "--json", str(out))
    assert r.returncode == 0, r.stderr
    import matplotlib.image
    img = matplotlib.image.imread(str(png))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.01          # not a blank canvas
    doc = json.loads(out.read_text())
    points = doc["plot"]["points"]
    assert len(points) == len(doc["results"]) >= 2
    assert {p["label"] for p in points} == {x["variant"] for x in doc["results"]}
    assert f"({len(points)} points)" in r.stdout


# ------------------------------------------------------------------------------ one-line errors

@pytest.mark.parametrize("args, needle", [
    (["/no/such/model.onnx"], "no such file"),
    (["{demo}", "--input-shape", "input:1x1x8"], "has rank 4"),
    (["{demo}", "--input-shape", "input:1x1x8xa"], "positive integer dims"),
    (["{demo}", "--input-shape", "input:1x2x8x8"], "fixed at 1"),
    (["{demo}", "--input-shape", "image:1x1x8x8"], "no input 'image'"),
    (["--variants", "int3"], "unknown variant 'int3'"),
    (["{demo}", "--iterations", "3", "--time", "1"], "not both"),
    (["{demo}", "--batch", "0"], "--batch"),
    (["{demo}", "--data", "/no/such.npz"], "no such file"),
    (["{demo}", "--compare", "openvino"], "onnxruntime only"),
], ids=["missing-model", "rank", "syntax", "fixed-dim", "unknown-input", "unknown-variant",
        "iterations-and-time", "batch-0", "missing-data", "unknown-compare"])
def test_user_errors_are_one_line(args, needle):
    r = _cli(*[a.replace("{demo}", qb.DEMO_MODEL) for a in args])
    assert needle in _one_error_line(r)


def test_not_a_model_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf")
    assert "bad.onnx" in _one_error_line(_cli(str(bad)))


def test_unavailable_variant_is_one_line():
    from qinfer.quant.quantize import WEIGHT_FORMATS
    missing = next(v for v in ("int4", "sparse-int8") if not qb.VARIANTS[v].available()) \
        if not all(qb.VARIANTS[v].available() for v in ("int4", "sparse-int8")) else None
    if missing is None:
        pytest.skip(f"every variant is built (weight formats {WEIGHT_FORMATS}, qinfer.prune present)")
    line = _one_error_line(_cli(qb.DEMO_MODEL, "--variants", f"float,{missing}"))
    assert f"'{missing}' is not available" in line


@pytest.fixture
def hide_modules(tmp_path):
    """PYTHONPATH entry whose packages shadow the named modules with an ImportError."""
    def make(*names):
        for n in names:
            d = tmp_path / "shadow" / n
            d.mkdir(parents=True)
            (d / "__init__.py").write_text(f"raise ImportError('{n} hidden by the test')\n")
        return {"PYTHONPATH": str(tmp_path / "shadow") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return make


def test_absent_onnxruntime_is_one_line(hide_modules):
    line = _one_error_line(_cli("--compare", "onnxruntime", env=hide_modules("onnxruntime")))
    assert line.endswith("onnxruntime is not installed: pip install onnxruntime")


def test_absent_matplotlib_is_one_line(hide_modules, tmp_path):
    line = _one_error_line(_cli("--plot", str(tmp_path / "p.png"), env=hide_modules("matplotlib")))
    assert "pip install matplotlib" in line
    assert not (tmp_path / "p.png").exists()


# ----------------------------------------------------------------------- variants plug in (fakes)

def test_quantize_and_prune_plug_in(monkeypatch):
    """When qinfer.quantize / qinfer.prune exist, the harness builds int8, int4 and sparse-int8 with
    them, calibrating on the demo's calibration split (fakes here return the float model)."""
    calls = []

    def fake_quantize(model, calibration, weights="int8", activations="int8", progress=True, **kw):
        feeds = list(calibration)
        calls.append(("quantize", weights, activations, sum(len(f["input"]) for f in feeds), sorted(feeds[0]),
                      feeds[0]["input"].shape[1:]))
        return model

    def fake_prune(model, sparsity=0.8, pattern="block4", calibration=None, **kw):
        calls.append(("prune", sparsity, pattern))
        calls.append(("prune calibration", sum(len(f["input"]) for f in calibration)))
        return model

    monkeypatch.setattr(qinfer, "quantize", fake_quantize, raising=False)
    monkeypatch.setattr(qinfer, "prune", fake_prune, raising=False)
    from qinfer.quant import quantize as qmod
    monkeypatch.setattr(qmod, "WEIGHT_FORMATS", ("int8", "int4"))
    buf = io.StringIO()
    doc = qb.run(None, iterations=3, warmup=0, measure_memory=False, progress=False, out=buf)
    assert [x["variant"] for x in doc["results"]] == list(qb.ALL_VARIANTS)
    assert ("prune", qb.SPARSITY, "block4") in calls
    assert ("prune calibration", 128) in calls       # SparseGPT on the same calibration split
    assert sorted(c[1] for c in calls if c[0] == "quantize") == ["int4", "int8", "int8"]
    for c in calls:
        if c[0] == "quantize":
            assert c[4] == ["input"] and c[5] == (1, 8, 8)
            assert c[3] == 128                  # every image of the calibration split, as feed dicts
    text = buf.getvalue()
    assert "calibration: digits_calib.npz (128 training images)" in text
    assert "not built yet" not in text
    assert all(x["accuracy"]["value"] > 0.9 for x in doc["results"])
    assert doc["results"][1]["calibration"].startswith("digits_calib.npz")


def test_bundled_variants_keep_the_demos_answers():
    """The real variants of the bundled demo: each within 3 points of float's test accuracy (the
    sparse one prunes 80% with SparseGPT on the calibration split; magnitude pruning alone lost 32)."""
    doc = qb.run(None, iterations=2, warmup=0, measure_memory=False, progress=False, out=io.StringIO())
    acc = {x["variant"]: x["accuracy"]["value"] for x in doc["results"]}
    assert set(acc) == set(qb.ALL_VARIANTS), acc
    for v, a in acc.items():
        assert a >= acc["float"] - 0.03, (v, acc)


def test_model_without_data_calibrates_on_synthesized_inputs(monkeypatch):
    monkeypatch.setattr(qinfer, "quantize", lambda m, c, **kw: m, raising=False)
    buf = io.StringIO()
    doc = qb.run(qb.DEMO_MODEL, iterations=2, warmup=0, measure_memory=False, progress=False, out=buf)
    assert [x["variant"] for x in doc["results"]] == ["float", "int8"]    # the default variants
    assert f"calibration: {qb.SYNTH_CALIB_SAMPLES} synthesized random inputs" in buf.getvalue()
    assert doc["results"][1]["accuracy"]["metric"] == "top1_agreement"


def test_default_variants_fall_back_to_what_exists(monkeypatch):
    monkeypatch.delattr(qinfer, "quantize", raising=False)
    buf = io.StringIO()
    doc = qb.run(qb.DEMO_MODEL, iterations=2, warmup=0, measure_memory=False, progress=False, out=buf)
    assert [x["variant"] for x in doc["results"]] == ["float"]
    assert "note: int8 not built yet" in buf.getvalue()
    assert doc["unavailable_variants"] == ["int8"]


# ------------------------------------------------------------------------------ --data handling

def test_data_with_and_without_labels(tmp_path):
    with np.load(qb.DEMO_TEST) as z:
        x, y = z["input"][:100], z["labels"][:100]
    np.savez(tmp_path / "lab.npz", input=x, labels=y)
    np.savez(tmp_path / "nolab.npz", anything=x.astype(np.float64))     # cast to the model's float32
    doc = qb.run(qb.DEMO_MODEL, data=tmp_path / "lab.npz", batch=4, iterations=2, warmup=0,
                 measure_memory=False, progress=False, out=io.StringIO())
    row = doc["results"][0]
    assert row["accuracy"]["metric"] == "accuracy" and row["accuracy"]["samples"] == 100
    assert row["batch"] == 4 and row["input_shapes"] == {"input": [4, 1, 8, 8]}
    doc = qb.run(qb.DEMO_MODEL, data=tmp_path / "nolab.npz", iterations=2, warmup=0,
                 measure_memory=False, progress=False, out=io.StringIO())
    assert doc["results"][0]["accuracy"] == {"metric": "top1_agreement", "value": 1.0, "samples": 100,
                                             "data": "--data"}


def test_data_that_does_not_fit(tmp_path):
    np.savez(tmp_path / "bad.npz", input=np.zeros((5, 1, 7, 7), np.float32))
    with pytest.raises(qb.BenchmarkError, match="dimension 2 = 7"):
        qb.run(qb.DEMO_MODEL, data=tmp_path / "bad.npz", iterations=1, measure_memory=False, out=io.StringIO())
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 1, 8, 8), np.float32), b=np.zeros((5, 1, 8, 8), np.float32))
    with pytest.raises(qb.BenchmarkError, match="expected one per model input"):
        qb.run(qb.DEMO_MODEL, data=tmp_path / "two.npz", iterations=1, measure_memory=False, out=io.StringIO())


# ------------------------------------------------------------------------------ harness pieces

class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, output_names, feeds):
        self.log.append(self.name)


def test_measure_interleaves_and_rotates():
    log = []
    engines = [(n, _Recorder(n, log), {}) for n in "abc"]
    times = qb.measure(engines, warmup=1, iterations=4)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    rounds = [log[i:i + 3] for i in range(3, len(log), 3)]           # after the warm-up round
    assert rounds == [list("abc"), list("bca"), list("cab"), list("abc")]


def test_measure_time_budget_keeps_minimum_and_progress_bar_works():
    log = []
    times = qb.measure([("a", _Recorder("a", log), {})], warmup=0, time_s=1e-6, progress=True)
    assert len(times["a"]) == qb.MIN_ITERATIONS


def test_symbolic_dims_get_printed_defaults(tmp_path, rng):
    from onnx import TensorProto, helper
    g = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"]),
         helper.make_node("ReduceMean", ["e"], ["pooled"], axes=[1], keepdims=1),
         helper.make_node("GlobalAveragePool", ["img"], ["p"])], "two",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 1, 8]),
         helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 3, 1, 1])],
        [helper.make_tensor("emb", TensorProto.FLOAT, [50, 8], rng.standard_normal(400).astype(np.float32))])
    path = tmp_path / "two.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    m = qinfer.convert(str(path))
    shapes, defaulted = qb.resolve_shapes(m.graph.inputs, {}, 2)
    assert shapes == {"ids": (2, 128), "img": (2, 3, 224, 224)}
    assert defaulted == {"ids": ["seq=128"], "img": ["height=224", "width=224"]}
    ids = qb.synthesize(m.graph, m.graph.inputs[0], shapes["ids"], rng)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 50      # below the table length
    buf = io.StringIO()
    doc = qb.run(str(path), input_shapes=["img:2x3x32x32"], iterations=2, warmup=0, measure_memory=False,
                 progress=False, out=buf)
    assert doc["results"][0]["input_shapes"] == {"ids": [2, 128], "img": [2, 3, 32, 32]}
    assert "symbolic dims defaulted: seq=128" in buf.getvalue()
    assert doc["results"][0]["accuracy"]["metric"] == "cosine_similarity"   # no classifier output


def test_accuracy_metrics():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    flipped = logits[:, ::-1].copy()
    assert qb.accuracy([logits], [logits], np.array([1, 0, 0])) == {"metric": "accuracy", "value": 2 / 3}
    assert qb.accuracy([flipped], [logits], None) == {"metric": "top1_agreement", "value": 0.0}
    feat = np.ones((3, 4, 5), np.float32)
    got = qb.accuracy([feat], [-feat], None)
    assert got["metric"] == "cosine_similarity" and got["value"] == pytest.approx(-1.0)


def test_parse_variants():
    assert qb.parse_variants("float, INT8,float") == ["float", "int8"]
    with pytest.raises(qb.BenchmarkError, match="--compare onnxruntime"):
        qb.parse_variants("onnxruntime")
    with pytest.raises(qb.BenchmarkError, match="no variant"):
        qb.parse_variants(" , ")


def test_demo_data_is_package_data():
    """The demo files are in the package folder (pyproject's package-data ships them) and small."""
    for p in (qb.DEMO_MODEL, qb.DEMO_TEST, qb.DEMO_CALIB):
        assert os.path.exists(p) and os.path.getsize(p) < 200_000, p
    with np.load(qb.DEMO_TEST) as z:
        assert z["input"].shape == (450, 1, 8, 8) and z["input"].dtype == np.float32
        assert z["labels"].shape == (450,)
