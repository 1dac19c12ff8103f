"""The .qinf format: round trips, memory mapping, atomic save, and hostile files."""
import gc
import json
import math
import mmap
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qinfer.errors import ModelFormatError
from qinfer.ir import serialize as S
from qinfer.ir.graph import Graph, Node, QuantParams, Value


# ------------------------------------------------------------------------------------ helpers
def _panel(rng):
    """512 bytes shaped like a packed int8 weight panel of 8 output channels in 32 columns: a
    quarter random, the rest zero padding (deflates to well under 7/8)."""
    p = np.zeros((4, 32, 4), np.int8)
    p[:, :8] = rng.integers(-127, 128, (4, 8, 4))
    return p.reshape(-1).view(np.uint8)


def make_graph():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 13)).astype(np.float32)      # 208 bytes: a blob, then padding
    inits = {
        "w": w,
        "b16": rng.standard_normal(4).astype(np.float16),
        "shape": np.array([-1, 4], dtype=np.int64),
        "q8": rng.integers(-128, 128, (4, 3), dtype=np.int8),
        "u8": rng.integers(0, 256, (2, 3, 16), dtype=np.uint8),  # 96 bytes: a blob
        "mask": np.array([True, False, True]),
        "scalar": np.array(2.5, dtype=np.float64),
        "empty": np.zeros((0, 7), dtype=np.float32),
        "i32": np.arange(6, dtype=np.int32)[::2],          # not contiguous
        "u16": np.arange(3, dtype=">u2"),                   # big-endian on input
        "panel": _panel(rng),                               # 512 bytes: a deflated blob
    }
    nodes = [
        Node("MatMul", ("x", "w"), ("mm",), {}, "matmul0"),
        Node("Add", ("mm", "b16"), ("add",), {}, "add0"),
        Node("Clip", ("add", "", ""), ("clip",),
             {"min": -math.inf, "max": math.inf, "nanv": math.nan, "neg0": -0.0}, "clip0"),
        Node("Reshape", ("clip", "shape"), ("y",), {"allowzero": 0}, "reshape0", ""),
        Node("Custom", ("y",), ("z", ""), {
            "t": np.arange(5, dtype=np.int64),
            "t0": np.array(7, dtype=np.uint8),
            "ints": [1, 2, 3], "floats": [1.5, math.inf], "s": "héllo\udcff\x00",
            "flag": True, "none": None, "tup": (1, (2.0, "a")),
            "d": {"k": [1, {"n": np.float32(0.25)}]}, "raw": b"\x00\xff",
            "big": 2 ** 70, "np_int": np.int64(-3), "np_bool": np.bool_(True),
            "shared": inits["w"],                           # same array as an initializer
        }, "custom0", "com.example"),
    ]
    qp = QuantParams(np.array([0.1, 0.2, 0.3], np.float32), np.array([0, 0, 0], np.int8), axis=1)
    return Graph(
        "test-graph", nodes,
        inputs=[Value("x", "float32", ("batch", 4)), Value("unused", "bool", (None, 2, "n"))],
        outputs=[Value("z", "float32", None, QuantParams(0.05, 128, bits=8)),
                 Value("y", "float32", ("batch", 4))],
        initializers=inits,
        value_info={"mm": Value("mm", "float32", ("batch", 13)),
                    "q8": Value("q8", "int8", (4, 3), qp),
                    "clip": Value("clip", None, None)},
        metadata={"producer_name": "pytorch", "opset": 17, "doc_string": "d",
                  "custom_metadata_map": {"labels": "cat,dog", "": "empty-key"},
                  "ratio": math.nan},
    )


def same(a, b):
    """Deep equality that treats nan == nan and checks types, dtypes and shapes."""
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype.name == b.dtype.name and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, np.generic):
        return type(a) is type(b) and same(np.asarray(a), np.asarray(b))
    if isinstance(a, float):
        return type(b) is float and (a == b and math.copysign(1, a) == math.copysign(1, b)
                                     or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return (type(b) is dict and list(a) == list(b)
                and all(same(a[k], b[k]) for k in a))
    if isinstance(a, QuantParams):
        return isinstance(b, QuantParams) and all(
            same(getattr(a, f), getattr(b, f)) for f in ("scale", "zero_point", "axis", "bits",
                                                         "group_size"))
    if isinstance(a, Value):
        return (isinstance(b, Value) and a.name == b.name and a.dtype == b.dtype
                and a.shape == b.shape and same(a.qparams, b.qparams))
    if isinstance(a, Node):
        return (isinstance(b, Node) and (a.op, a.name, a.domain, a.inputs, a.outputs)
                == (b.op, b.name, b.domain, b.inputs, b.outputs) and same(a.attrs, b.attrs))
    return type(a) is type(b) and a == b


def assert_same_graph(a, b):
    assert a.name == b.name
    assert same(a.metadata, b.metadata)
    assert same(a.inputs, b.inputs) and same(a.outputs, b.outputs)
    assert list(a.value_info) == list(b.value_info) and same(a.value_info, b.value_info)
    assert list(a.initializers) == list(b.initializers)
    for k in a.initializers:
        x = a.initializers[k]
        y = b.initializers[k]
        assert same(np.asarray(x, dtype=x.dtype.newbyteorder("=")), y), k
    assert len(a.nodes) == len(b.nodes)
    for n, m in zip(a.nodes, b.nodes):
        assert same(n, m), (n, m)


def split(data):
    """A valid file -> (header dict, data section bytes); a deflated header is inflated."""
    flags, hlen = struct.unpack_from("<IQ", data, 12)
    start = (S.PREFIX_SIZE + hlen + 63) // 64 * 64
    head = data[S.PREFIX_SIZE:S.PREFIX_SIZE + hlen]
    if flags & S.FLAG_ZLIB_HEADER:
        head = zlib.decompress(head[8:])
    return json.loads(head), data[start:]


def repack(header, blob, version=S.FORMAT_VERSION, flags=0, raw_header=None):
    """Build a file around ``header`` with a correct header checksum (to reach deeper checks)."""
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    out = struct.pack("<8sIIQI", S.MAGIC, version, flags, len(head), zlib.crc32(head)) + head
    return out + b"\0" * (-len(out) % 64) + blob


@pytest.fixture(scope="module")
def good():
    return S.to_bytes(make_graph(), deflate=True)   # (its "panel" deflated: see test_layout)


def refused(data, match=None):
    with pytest.raises(ModelFormatError, match=match) as e:
        S.from_bytes(data)
    return str(e.value)


# ------------------------------------------------------------------------------------ round trip
def test_round_trip_bytes(good):
    g = make_graph()
    g2 = S.from_bytes(good)
    assert_same_graph(g, g2)
    assert g2.nodes[4].attrs["shared"] is g2.initializers["w"]   # stored once, shared on load
    assert S.to_bytes(g2, deflate=True) == good                  # deterministic, idempotent
    assert S.to_bytes(S.from_bytes(S.to_bytes(g2))) == S.to_bytes(g)


@pytest.mark.parametrize("deflate", [False, True])
def test_round_trip_file(tmp_path, deflate):
    g = make_graph()
    p = tmp_path / "m.qinf"
    S.save(g, p, deflate=deflate)
    assert_same_graph(g, S.load(p))
    assert_same_graph(g, S.load(str(p), verify_checksums=False))


def test_layout(good):
    assert good[:8] == S.MAGIC == b"\x89QINF\r\n\x1a"
    magic, version, flags, hlen, hcrc = struct.unpack_from("<8sIIQI", good)
    assert (version, flags) == (S.FORMAT_VERSION, S.FLAG_ZLIB_HEADER)
    head = good[28:28 + hlen]
    assert zlib.crc32(head) == hcrc
    size, = struct.unpack_from("<Q", head)
    text = zlib.decompress(head[8:])
    assert len(text) == size > 4 * hlen / 3                  # deflated because it saves
    header = json.loads(text)
    assert header["producer"] == "qinfer"
    start = (28 + hlen + 63) // 64 * 64
    assert len(good) == start + header["data_nbytes"]
    g = make_graph()
    for t in header["tensors"]:
        a = g.initializers.get(t["name"])
        if "data" in t:            # fewer than 64 bytes: in the header, as hex
            assert set(t) == {"name", "dtype", "shape", "data"} and len(t["data"]) < 128
            if a is not None:
                assert bytes.fromhex(t["data"]) == a.astype(a.dtype.newbyteorder("<")).tobytes()
            continue
        assert t["nbytes"] >= 64
        assert t["offset"] % 64 == 0 and (start + t["offset"]) % 64 == 0
        stored = t.get("deflated", t["nbytes"])
        blob = good[start + t["offset"]:start + t["offset"] + stored]
        assert zlib.crc32(blob) == t["crc32"]
        if "deflated" in t:         # a zlib stream of the tensor's bytes, at most 7/8 of them
            assert stored <= 7 / 8 * t["nbytes"]
            assert zlib.decompress(blob) == a.tobytes()
    blobs = sorted(t["name"] for t in header["tensors"] if "data" not in t)
    assert blobs == ["panel", "u8", "w"], blobs
    # random floats and random bytes do not deflate: stored as they are
    assert [t["name"] for t in header["tensors"] if "deflated" in t] == ["panel"]
    u16 = next(t for t in header["tensors"] if t["name"] == "u16")
    assert u16["data"] == "000001000200"                      # little-endian


def test_blobs_are_stored_as_they_are_by_default(good):
    data = S.to_bytes(make_graph())
    header, _ = split(data)
    assert not [t for t in header["tensors"] if "deflated" in t]
    assert len(data) > len(good)
    assert_same_graph(make_graph(), S.from_bytes(data))


def test_empty_graph_round_trip():
    g = Graph("empty")
    data = S.to_bytes(g)
    assert len(data) % 64 == 0
    g2 = S.from_bytes(data)
    assert g2.name == "empty" and not g2.nodes and not g2.initializers


def base_chain(a):
    """ndarray.base links, then the object a memoryview exports (numpy wraps buffers in one)."""
    out = []
    while a is not None:
        out.append(a)
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
    return out


@pytest.mark.parametrize("deflate", [False, True])
def test_load_is_memory_mapped_and_read_only(tmp_path, deflate):
    """By default every blob is a view of one mapping; with deflate=True, so is every blob that
    was not deflated ("panel" is), and the deflated ones are aligned arrays of their own."""
    p = tmp_path / "m.qinf"
    S.save(make_graph(), p, deflate=deflate)
    g = S.load(p)
    deflated = {t["name"] for t in S.read_header(p)["tensors"] if "deflated" in t}
    assert deflated == ({"panel"} if deflate else set())
    maps = set()
    for name, a in g.initializers.items():
        assert not a.flags.writeable, name
        with pytest.raises(ValueError):
            a[...] = 0
        mm = [b for b in base_chain(a) if isinstance(b, mmap.mmap)]
        if a.nbytes < S.INLINE_BELOW or name in deflated:   # arrays of their own
            assert not mm, name
            assert name not in deflated or a.ctypes.data % 64 == 0, name
            continue
        assert len(mm) == 1, name
        maps.add(id(mm[0]))
        if a.size:
            assert a.ctypes.data % 64 == 0, name
    assert len(maps) == 1          # one mapping for the whole file
    w = g.initializers["w"]
    mm = next(b for b in base_chain(w) if isinstance(b, mmap.mmap))
    whole = np.frombuffer(mm, np.uint8)
    assert np.shares_memory(w, whole)


def test_mapping_outlives_graph(tmp_path):
    p = tmp_path / "m.qinf"
    g0 = make_graph()
    S.save(g0, p)
    w = S.load(p).initializers["w"]
    gc.collect()
    assert np.array_equal(w, g0.initializers["w"])


def test_from_bytes_is_a_view(good):
    g = S.from_bytes(good)
    assert np.shares_memory(g.initializers["w"], np.frombuffer(good, np.uint8))
    g2 = S.from_bytes(bytearray(good))
    assert not g2.initializers["w"].flags.writeable


def test_read_header(tmp_path):
    p = tmp_path / "m.qinf"
    S.save(make_graph(), p)
    h = S.read_header(p)
    assert h["format_version"] == S.FORMAT_VERSION and h["graph_name"] == "test-graph"


def test_save_refuses_unstorable_values():
    g = Graph("g", [Node("Relu", ("x",), ("y",), {"bad": {1, 2}})], [Value("x", "float32")],
              [Value("y", "float32")])
    with pytest.raises(ModelFormatError, match="set"):
        S.to_bytes(g)
    g = Graph("g", [], [], [Value("s")], {"s": np.array(["a"])})
    with pytest.raises(ModelFormatError):
        S.to_bytes(g)


# ------------------------------------------------------------------------------------ atomic save
def test_save_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "m.qinf"
    S.save(Graph("old"), p)
    old = p.read_bytes()
    calls = []

    def half_then_fail(f, flat):
        calls.append(1)
        f.write(memoryview(flat)[:len(flat) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(S, "_write_blob", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        S.save(make_graph(), p)
    assert calls
    assert p.read_bytes() == old
    assert os.listdir(tmp_path) == ["m.qinf"]     # the temporary file is gone
    assert S.load(p).name == "old"


def test_save_crash_keeps_old_file(tmp_path):
    """The process dies mid-write (os._exit: no cleanup runs): the old file is intact."""
    p = tmp_path / "m.qinf"
    S.save(Graph("old"), p)
    old = p.read_bytes()
    import qinfer
    src = os.path.dirname(os.path.dirname(os.path.abspath(qinfer.__file__)))   # the qinfer under test
    code = f"""
import os, sys
sys.path.insert(0, {os.path.abspath(src)!r})
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from qinfer.ir import serialize as S
import test_serialize as T
def die(f, flat):
    f.write(memoryview(flat)[:len(flat) // 2]); f.flush(); os._exit(3)
S._write_blob = die
S.save(T.make_graph(), {str(p)!r})
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 3, r.stderr.decode()
    assert p.read_bytes() == old
    assert S.load(p).name == "old"


def test_save_replaces_and_keeps_mode(tmp_path):
    p = tmp_path / "m.qinf"
    S.save(Graph("a"), p)
    os.chmod(p, 0o640)
    S.save(Graph("b"), p)
    assert S.load(p).name == "b"
    assert os.stat(p).st_mode & 0o777 == 0o640


def test_save_over_the_mapped_file(tmp_path):
    """Load, change, save over the same path: the old mapping stays valid (rename, not rewrite)."""
    p = tmp_path / "m.qinf"
    g0 = make_graph()
    S.save(g0, p)
    g = S.load(p)
    g2 = g.copy()
    g2.initializers["w"] = np.asarray(g.initializers["w"]) * 2
    S.save(g2, p)
    assert np.array_equal(g.initializers["w"], g0.initializers["w"])
    assert np.array_equal(S.load(p).initializers["w"], g0.initializers["w"] * 2)


def test_save_through_symlink(tmp_path):
    real = tmp_path / "real.qinf"
    S.save(Graph("a"), real)
    link = tmp_path / "link.qinf"
    link.symlink_to(real)
    S.save(Graph("b"), link)
    assert link.is_symlink() and S.load(real).name == "b"


# ------------------------------------------------------------------------------------ bad paths
def test_missing_and_directory(tmp_path):
    with pytest.raises(ModelFormatError, match="cannot open"):
        S.load(tmp_path / "nope.qinf")
    with pytest.raises(ModelFormatError, match="directory"):
        S.load(tmp_path)
    os.mkfifo(tmp_path / "fifo")                  # opening a FIFO would block: refused instead
    with pytest.raises(ModelFormatError, match="not a regular file"):
        S.load(tmp_path / "fifo")
    with pytest.raises(ModelFormatError, match="not a regular file"):
        S.read_header(tmp_path / "fifo")
    (tmp_path / "empty.qinf").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="too short"):
        S.load(tmp_path / "empty.qinf")


# ------------------------------------------------------------------------------------ hostile files
def test_truncation_everywhere(good, tmp_path):
    for n in range(len(good)):
        refused(good[:n])
    p = tmp_path / "t.qinf"
    for n in (0, 5, 27, 28, 100, len(good) // 2, len(good) - 1):
        p.write_bytes(good[:n])
        with pytest.raises(ModelFormatError):
            S.load(p)


def test_trailing_bytes(good):
    refused(good + b"\0", "truncated, or bytes appended")


def test_every_byte_bit_flip_is_caught(good, rng):
    bits = rng.integers(0, 8, len(good))
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 1 << int(bits[i])
        refused(bytes(bad))


def test_random_multi_byte_corruption(good, rng):
    for _ in range(300):
        bad = bytearray(good)
        for i in rng.integers(0, len(good), rng.integers(1, 8)):
            bad[i] = int(rng.integers(0, 256))
        if bytes(bad) != good:
            refused(bytes(bad))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_magic(tail):
    for data in (S.MAGIC + tail, S.MAGIC + struct.pack("<IIQ", 1, 0, len(tail)) + tail):
        refused(data)


def test_wrong_magic(good):
    assert "not a .qinf file" in refused(b"PK\3\4" + good[4:], "bad magic")
    assert "ONNX" in refused(b"\x08\x07\x12" + good[3:])
    crlf = good[:5] + b"\r\r\n" + good[7:]                  # a text-mode rewrite of \n
    assert "text-mode" in refused(crlf)
    assert "text-mode" in refused(good.replace(b"\r\n", b"\n", 1))


def test_newer_and_older_version(good):
    newer = good[:8] + struct.pack("<I", 7) + good[12:]
    msg = refused(newer, "newer")
    assert "7" in msg and str(S.FORMAT_VERSION) in msg
    older = good[:8] + struct.pack("<I", 0) + good[12:]
    msg = refused(older, "older")
    assert "0" in msg and str(S.FORMAT_VERSION) in msg


def _as_version_2(good):
    """``good`` as format version 2 wrote it: every blob as it is (version 3 deflated some)."""
    header, data = split(good)
    blob = bytearray()
    for t in sorted((t for t in header["tensors"] if "data" not in t), key=lambda t: t["offset"]):
        raw = data[t["offset"]:t["offset"] + t.pop("deflated", t["nbytes"])]
        _append_blob(header, blob, t, zlib.decompress(raw) if len(raw) != t["nbytes"] else raw)
    return header, bytes(blob)


def _append_blob(header, blob, t, raw):
    """Store ``raw`` as tensor record ``t``'s blob at the end of ``blob`` (a bytearray)."""
    blob += b"\0" * (-len(blob) % 64)
    t.update(offset=len(blob), nbytes=len(raw), crc32=zlib.crc32(raw))
    blob += raw
    header["data_nbytes"] = len(blob)


def test_version_2_files_still_load(good):
    header, blob = _as_version_2(good)
    old = repack(header, blob, version=2)
    g = S.from_bytes(old)
    assert_same_graph(make_graph(), g)
    assert S.to_bytes(g, deflate=True) == good     # saved again: the current version
    tensor(header, "panel")["deflated"] = 64
    refused(repack(header, blob, version=2), "version 2 file with a deflated tensor")


def _as_version_1(good):
    """``good`` as format version 1 wrote it: every tensor a blob (version 2 put those of fewer
    than 64 bytes in the header)."""
    header, blob = _as_version_2(good)
    blob = bytearray(blob)
    for t in header["tensors"]:
        if "data" in t:
            _append_blob(header, blob, t, bytes.fromhex(t.pop("data")))
    return header, bytes(blob)


def test_version_1_files_still_load(good):
    header, blob = _as_version_1(good)
    old = repack(header, blob, version=1)
    assert struct.unpack_from("<I", old, 8)[0] == 1
    g = S.from_bytes(old)
    assert_same_graph(make_graph(), g)
    assert S.to_bytes(g, deflate=True) == good     # saved again: the current version
    tensor(header, "shape").update(data="ffffffffffffffff0400000000000000")
    for k in ("offset", "nbytes", "crc32"):
        tensor(header, "shape").pop(k)
    refused(repack(header, blob, version=1), "version 1 file with a tensor stored in the header")


def test_unknown_flags(good):
    for bit in (2, 1 << 31):
        refused(good[:12] + struct.pack("<I", S.FLAG_ZLIB_HEADER | bit) + good[16:], "flags")


def _deflated(text, declared=None, tail=b""):
    return struct.pack("<Q", len(text) if declared is None else declared) + zlib.compress(text) + tail


def test_small_headers_stay_plain():
    g = Graph("tiny")
    data = S.to_bytes(g)
    assert struct.unpack_from("<I", data, 12)[0] == 0
    assert S.from_bytes(data).name == "tiny"


def test_plain_and_deflated_headers_read_alike(good):
    header, blob = split(good)
    text = json.dumps(header).encode()
    plain = repack(None, blob, raw_header=text)
    deflated = repack(None, blob, flags=S.FLAG_ZLIB_HEADER, raw_header=_deflated(text))
    assert_same_graph(S.from_bytes(plain), S.from_bytes(deflated))
    assert_same_graph(S.from_bytes(good), S.from_bytes(plain))


@pytest.mark.parametrize("case", ["declared longer", "declared shorter", "trailing bytes",
                                  "cut stream", "not deflate", "no length", "bomb", "plain as deflated"])
def test_bad_deflated_headers(good, case):
    header, blob = split(good)
    text = json.dumps(header).encode()
    raw = {
        "declared longer": _deflated(text, len(text) + 1),
        "declared shorter": _deflated(text, len(text) - 1),
        "trailing bytes": _deflated(text, tail=b"\0junk"),
        "cut stream": _deflated(text)[:-9],
        "not deflate": struct.pack("<Q", len(text)) + text,
        "no length": b"\x78",
        "bomb": _deflated(b" " * (1 << 24)),          # 16 MiB of spaces in ~16 KiB: refused unread
        "plain as deflated": text,
    }[case]
    data = repack(None, blob, flags=S.FLAG_ZLIB_HEADER, raw_header=raw)
    msg = refused(data, "deflated header")
    assert "<bytes>" in msg


def test_bomb_is_refused_before_inflating(good):
    """The declared length is checked against the expansion bound before anything is inflated."""
    import tracemalloc
    _, blob = split(good)
    data = repack(None, blob, flags=S.FLAG_ZLIB_HEADER, raw_header=_deflated(b"[" + b" " * (1 << 26) + b"]"))
    tracemalloc.start()
    try:
        refused(data, f"more than {S.MAX_HEADER_EXPANSION}x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data) + (1 << 20), peak


def test_huge_header_length(good):
    for n in (len(good), 2 ** 40, 2 ** 64 - 1):
        refused(good[:16] + struct.pack("<Q", n) + good[24:], "beyond the end")


def test_header_crc_mismatch(good):
    refused(good[:24] + struct.pack("<I", 0) + good[28:], "checksum")


def test_blob_crc_and_verify_checksums_flag(good, tmp_path):
    header, blob = split(good)
    t = next(t for t in header["tensors"] if t["name"] == "w")
    bad = bytearray(good)
    bad[len(good) - len(blob) + t["offset"]] ^= 0x40
    refused(bytes(bad), "tensor 'w': checksum")
    p = tmp_path / "c.qinf"
    p.write_bytes(bytes(bad))
    with pytest.raises(ModelFormatError, match="checksum"):
        S.load(p)
    g = S.load(p, verify_checksums=False)        # the caller opted out of tensor checksums
    assert g.initializers["w"].shape == (4, 13)


def mutate(good, fn):
    header, blob = split(good)
    out = fn(header, blob)
    if isinstance(out, tuple):       # (header, blob) replaced; other returns (dict.pop) ignored
        header, blob = out
    return repack(header, blob)


def tensor(header, name):
    return next(t for t in header["tensors"] if t["name"] == name)


CRAFTED = {
    "offset beyond file": (lambda h, b: tensor(h, "w").update(offset=len(b) + 64), "outside"),
    "offset huge": (lambda h, b: tensor(h, "w").update(offset=2 ** 62), "outside"),
    "offset into header": (lambda h, b: tensor(h, "w").update(offset=-64), "outside"),
    "misaligned": (lambda h, b: tensor(h, "w").update(offset=tensor(h, "w")["offset"] + 4),
                   "multiple of 64|outside"),
    "nbytes wrong": (lambda h, b: tensor(h, "w").update(nbytes=44), "nbytes"),
    "nbytes huge": (lambda h, b: tensor(h, "w").update(nbytes=2 ** 63), "outside"),
    "shape mismatch": (lambda h, b: tensor(h, "w").update(shape=[4, 4]), "nbytes"),
    "negative dim": (lambda h, b: tensor(h, "w").update(shape=[-4, -3]), "dimension"),
    "absurd dims": (lambda h, b: tensor(h, "empty").update(shape=[0, 2 ** 40, 2 ** 40]),
                    "absurd"),
    "float dim": (lambda h, b: tensor(h, "w").update(shape=[4.0, 3]), "dimension"),
    "rank 100": (lambda h, b: tensor(h, "empty").update(shape=[0] * 100), "rank"),
    "unknown dtype": (lambda h, b: tensor(h, "w").update(dtype="object"), "dtype"),
    "dtype not str": (lambda h, b: tensor(h, "w").update(dtype=["float32"]), "dtype"),
    "bfloat16": (lambda h, b: tensor(h, "b16").update(dtype="bfloat16"), "dtype"),
    "crc out of range": (lambda h, b: tensor(h, "w").update(crc32=-1), "crc32"),
    "duplicate tensor": (lambda h, b: h["tensors"].append(dict(tensor(h, "w"))), "duplicate"),
    "overlap": (lambda h, b: tensor(h, "u8").update(offset=tensor(h, "w")["offset"],
                                                   crc32=tensor(h, "w")["crc32"] and 0),
                "overlap|checksum"),
    # tensors stored in the header (fewer than 64 bytes)
    "inline bad hex": (lambda h, b: tensor(h, "shape").update(data="zz" * 16), "hex"),
    "inline uppercase": (lambda h, b: tensor(h, "shape").update(data=tensor(h, "shape")["data"].upper()),
                         "hex"),
    "inline spaces": (lambda h, b: tensor(h, "u16").update(data="00 0 1000200"), "hex"),
    "inline short": (lambda h, b: tensor(h, "shape").update(data=tensor(h, "shape")["data"][:-2]),
                     "hex digits"),
    "inline shape mismatch": (lambda h, b: tensor(h, "shape").update(shape=[3]), "hex digits"),
    "inline not str": (lambda h, b: tensor(h, "shape").update(data=[1, 2]), "must be a string"),
    "inline too big": (lambda h, b: tensor(h, "shape").update(shape=[8], data="00" * 64),
                       "fewer than 64"),
    "inline and blob keys": (lambda h, b: tensor(h, "shape").update(offset=0), "unknown key"),
    "inline duplicate": (lambda h, b: h["tensors"].append(dict(tensor(h, "shape"))), "duplicate"),
    "inline bool not 0/1": (lambda h, b: tensor(h, "mask").update(data="010201"), "bool"),
    "missing key": (lambda h, b: h.pop("nodes"), "lacks"),
    "unknown key": (lambda h, b: h.update(extra=1), "unknown key"),
    "tensor lacks key": (lambda h, b: tensor(h, "w").pop("crc32"), "lacks"),
    "nodes not list": (lambda h, b: h.update(nodes={}), "must be a list"),
    "node op int": (lambda h, b: h["nodes"][0].update(op=3), "must be a string"),
    "bad input name": (lambda h, b: h["nodes"][0].update(inputs=[None]), "must be a string"),
    "dangling input": (lambda h, b: h["nodes"][0].update(inputs=["x", "nope"]), "nope"),
    "cycle": (lambda h, b: h["nodes"][0].update(inputs=["x", "add"]), "topological"),
    "produced twice": (lambda h, b: h["nodes"][1].update(outputs=["mm"]), "already produced"),
    "output not produced": (lambda h, b: h["outputs"][0].update(name="ghost"), "ghost"),
    "dangling tensor ref": (lambda h, b: h["nodes"][4]["attrs"].update(t={"__tensor__": "no"}),
                            "not in the tensor table"),
    "unknown tag": (lambda h, b: h["nodes"][4]["attrs"].update(t={"__import__": "os"}),
                    "unknown value tag"),
    "two tags": (lambda h, b: h["nodes"][4]["attrs"].update(t={"__float__": "nan", "x": 1}),
                 "exactly one"),
    "bad float tag": (lambda h, b: h["nodes"][4]["attrs"].update(t={"__float__": "1e5"}),
                      "__float__"),
    "bad scalar": (lambda h, b: h["nodes"][4]["attrs"].update(t={"__scalar__": ["int8", 300]}),
                   "out of range"),
    "scalar overflow": (lambda h, b: h["nodes"][4]["attrs"].update(
        t={"__scalar__": ["float16", 1e300]}), "out of range"),
    "scalar dtype": (lambda h, b: h["nodes"][4]["attrs"].update(t={"__scalar__": ["O", 1]}),
                     "dtype"),
    "bad bytes": (lambda h, b: h["nodes"][4]["attrs"].update(t={"__bytes__": "zz"}), "hex"),
    "deep nesting": (lambda h, b: h["nodes"][4]["attrs"].update(t=json.loads("[" * 40 + "]" * 40)),
                     "nested"),
    "unknown initializer": (lambda h, b: h["initializers"].append("nope"), "not in the tensor"),
    "duplicate initializer": (lambda h, b: h["initializers"].append("w"), "duplicate"),
    "duplicate value_info": (lambda h, b: h["value_info"].append(h["value_info"][0]),
                             "duplicate"),
    "value bad dtype": (lambda h, b: h["inputs"][0].update(dtype="string"), "dtype"),
    "value bad dim": (lambda h, b: h["inputs"][0].update(shape=[-1, 4]), "dimension"),
    "value shape str": (lambda h, b: h["inputs"][0].update(shape="batch"), "must be a list"),
    "qparams nan scale": (lambda h, b: h["outputs"][0]["qparams"].update(
        scale={"__float__": "nan"}), "scale"),
    "qparams zp range": (lambda h, b: h["outputs"][0]["qparams"].update(zero_point=1000),
                         "zero_point"),
    "qparams huge int scale": (lambda h, b: h["outputs"][0]["qparams"].update(scale=2 ** 80,
                                                                              zero_point=2 ** 80),
                               "scale"),
    "qparams axis dict": (lambda h, b: h["outputs"][0]["qparams"].update(
        axis={"__dict__": {}}), "axis"),
    "qparams lacks key": (lambda h, b: h["outputs"][0]["qparams"].pop("bits"), "lacks"),
    "data_nbytes short": (lambda h, b: h.update(data_nbytes=h["data_nbytes"] - 1), "bytes"),
    "data_nbytes negative": (lambda h, b: h.update(data_nbytes=-1), "bytes"),
    "data_nbytes float": (lambda h, b: h.update(data_nbytes=1.5), "integer"),
    "header is list": (lambda h, b: ([h], b), "header must be"),
    "graph name int": (lambda h, b: h.update(graph_name=1), "graph_name"),
    "metadata list": (lambda h, b: h.update(metadata=[]), "metadata"),
    "bool not 0/1": (lambda h, b: (h, bytearray(b)), None),   # replaced below
}


def _bool_two(h, b):
    """A bool blob (the mask stored as one, 64 bytes) holding a 2, its crc32 right."""
    t = tensor(h, "mask")
    raw = bytearray(64)
    raw[0] = 2
    t.pop("data")
    t.update(shape=[64], offset=(len(b) + 63) // 64 * 64, nbytes=64, crc32=zlib.crc32(bytes(raw)))
    b = bytes(b) + b"\0" * (-len(b) % 64) + bytes(raw)
    h["data_nbytes"] = len(b)
    return h, b


CRAFTED["bool not 0/1"] = (_bool_two, "bool")


def _restream(stream_of, **rec):
    """A mutation giving the deflated tensor 'panel' the zlib stream ``stream_of(its bytes)``
    (its old bytes zeroed, the new ones after the data section, crc32 right) and the record
    fields ``rec``."""
    def fn(h, b):
        t = tensor(h, "panel")
        b = bytearray(b)
        old = zlib.decompress(bytes(b[t["offset"]:t["offset"] + t["deflated"]]))
        b[t["offset"]:t["offset"] + t["deflated"]] = bytes(t["deflated"])
        _append_blob(h, b, t, stream_of(old))
        t.update(deflated=t["nbytes"], nbytes=len(old))
        t.update(rec)
        return h, bytes(b)
    return fn


def _flip_middle(z):
    z = bytearray(z)
    z[len(z) // 2] ^= 0x55
    return bytes(z)


CRAFTED.update({
    "deflated damaged": (_restream(lambda r: _flip_middle(zlib.compress(r, 9))),
                         "do not inflate|other than the declared"),
    "deflated short": (_restream(lambda r: zlib.compress(r[:-1], 9)), "other than the declared"),
    "deflated long": (_restream(lambda r: zlib.compress(r + b"\1", 9)), "other than the declared"),
    "deflated trailing bytes": (_restream(lambda r: zlib.compress(r, 9) + b"\1\2\3"),
                                "other than the declared"),
    "deflated cut": (_restream(lambda r: zlib.compress(r, 9)[:-4]), "other than the declared"),
    "deflated raw bytes": (_restream(lambda r: r), "do not inflate"),
    # (1 MiB of zeros deflates to about 1 KiB, which no stream inflates to 16 MiB)
    "deflated bomb": (_restream(lambda r: zlib.compress(bytes(1 << 20), 9), shape=[1 << 24],
                                nbytes=1 << 24), "cannot hold"),
    "deflated empty": (_restream(lambda r: zlib.compress(b"", 9), shape=[0], nbytes=0),
                       "cannot hold"),
    "deflated tiny": (_restream(lambda r: zlib.compress(r, 9), deflated=4), "cannot hold"),
    "deflated beyond file": (lambda h, b: tensor(h, "panel").update(deflated=len(b)), "outside"),
    "deflated not int": (lambda h, b: tensor(h, "panel").update(deflated="60"), "integer"),
    "deflated in header": (lambda h, b: tensor(h, "shape").update(deflated=8), "unknown key"),
})


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_headers(good, case):
    fn, match = CRAFTED[case]
    refused(mutate(good, fn), match)


def test_nonzero_padding(good):
    header, blob = split(good)
    ends = sorted(t["offset"] + t.get("deflated", t["nbytes"]) for t in header["tensors"]
                  if "data" not in t and t.get("deflated", t["nbytes"]) % 64)
    bad = bytearray(blob)
    bad[ends[0]] = 1                                   # the first byte of padding after a blob
    refused(repack(header, bytes(bad)), "padding")
    head = good[:S.PREFIX_SIZE + struct.unpack_from("<Q", good, 16)[0]]
    if len(head) % 64:
        refused(head + b"\1" + good[len(head) + 1:], "padding after the header")


def test_json_level_attacks(good):
    header, blob = split(good)
    text = json.dumps(header)
    cases = {
        "not json": b"{not json",
        "not utf8": b'{"a": "\xff\xfe"}',
        "NaN literal": text.replace('"data_nbytes": ', '"data_nbytes": NaN, "x": ').encode(),
        "duplicate key": text.replace('"data_nbytes": ', '"data_nbytes": 0, "data_nbytes": ')
        .encode(),
        "deep json": b"[" * 100000 + b"]" * 100000,
        "huge int": b'{"data_nbytes": 1' + b"0" * 5000 + b"}",
    }
    for name, raw in cases.items():
        with pytest.raises(ModelFormatError):
            S.from_bytes(repack(None, blob, raw_header=raw))


# ------------------------------------------------------------------------------------ properties
scalars = (st.none() | st.booleans() | st.integers(-2 ** 80, 2 ** 80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
           | st.binary(max_size=8))
values = st.recursive(
    scalars,
    lambda kids: (st.lists(kids, max_size=4) | st.lists(kids, max_size=3).map(tuple)
                  | st.dictionaries(st.text(max_size=4), kids, max_size=3)),
    max_leaves=12)
arrays = st.sampled_from(["float32", "float16", "float64", "int8", "uint8", "int16", "int32",
                          "int64", "uint16", "uint32", "uint64", "bool"]).flatmap(
    lambda dt: st.lists(st.integers(0, 3), max_size=3).map(
        lambda shape: (np.arange(int(np.prod(shape)), dtype=np.int64) % 2 == 0).astype(dt)
        .reshape(shape)))


@settings(max_examples=60, deadline=None)
@given(attrs=st.dictionaries(st.text(max_size=6), values | arrays, max_size=5),
       meta=st.dictionaries(st.text(max_size=6), values, max_size=3))
def test_attribute_round_trip(attrs, meta):
    g = Graph("h", [Node("Op", ("x",), ("y",), attrs, "n")], [Value("x", "float32", ("b",))],
              [Value("y")], metadata=meta)
    g2 = S.from_bytes(S.to_bytes(g))
    assert same(g.nodes[0].attrs, g2.nodes[0].attrs)
    assert same(g.metadata, g2.metadata)


WEIRD = [None, True, False, 0, -1, 1, 2 ** 63, 2 ** 64, -2 ** 63, 1.5, -0.0, 1e308, 10 ** 30, "",
         "x", "y", "w", "mm", "float32", "__blob0__", [], [None], [1, 2], [[1]], [0] * 70, {},
         {"a": 1}, {"__tensor__": "w"}, {"__float__": "nan"}, {"__dict__": {}}, {"__tuple__": [1]},
         {"__scalar__": ["int8", 1]}, {"__scalar__": ["bool", 1]}, {"__bytes__": ""}]


def test_structural_header_fuzz(good, rng):
    """Random JSON-level edits of a valid header (with a correct checksum, so they reach the
    structural checks): every result loads or raises ModelFormatError, nothing else."""
    header, blob = split(good)

    def paths(o, p=()):
        yield p
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            yield from paths(v, p + (k,))

    every = [p for p in paths(header) if p]
    for _ in range(1000):
        h = json.loads(json.dumps(header))
        for _ in range(int(rng.integers(1, 4))):
            p = every[int(rng.integers(len(every)))]
            try:
                o = h
                for k in p[:-1]:
                    o = o[k]
                new = json.loads(json.dumps(WEIRD[int(rng.integers(len(WEIRD)))]))
                r = rng.random()
                if r < 0.7:
                    o[p[-1]] = new
                elif isinstance(o, dict):
                    del o[p[-1]]
                else:
                    o.append(new)
            except (KeyError, IndexError, TypeError, AttributeError):
                pass                        # an earlier edit removed or replaced the path
        try:
            S.from_bytes(repack(h, blob))
        except ModelFormatError:
            pass
