"""The ``.qinf`` file: one Graph, memory-mapped at load. The byte layout is in docs/formats.md.

Design: a fixed 28-byte prefix (magic, version, flags, header length, header crc32), a JSON header
that describes everything but the tensor bytes (deflated when it is 1 KiB or more: 5-15x smaller,
and on small models the header is a large part of the file), then 64-byte-aligned little-endian
tensor blobs, each with its own crc32. JSON keeps the header readable (``qinfer inspect``,
``read_header``) and needs no schema compiler; the blobs are never parsed, only viewed: ``load``
maps the file once and every initializer is a read-only numpy view of that one mapping (the
mapping lives as long as any array refers to it). Tensors of fewer than 64 bytes (shape vectors,
axes, a layer's one shared scale) are the exception: their bytes are written in the header, as
hex, since a blob of theirs would cost more in alignment padding than in data (a quantized
2-layer transformer holds 30 of them: 1.9 KB as blobs, 3% of its file); they are read into small
read-only arrays.

On request (``save(..., deflate=True)``, format version 3), blobs that deflate well are stored as
zlib streams: packed int8 weights of narrow layers, whose panels are padded with zero columns,
shrink by a quarter or more; float32 and random-looking bytes do not and stay as they are. The
stream is kept when it is at most 7/8 of the bytes, and ``load`` inflates it into an array of its
own (read-only, 64-byte aligned) after checking the stream's size against the declared one and
the zlib format's own limit. This trades the zero-copy load of those tensors for a smaller file,
so it is not the default: by default every blob is a view of the mapping.

Hostile input: every length, offset and count is checked against the size of the file before
anything is sliced or allocated, every byte of the file is covered by a checksum or must be zero
padding, and nothing named in the file is imported, evaluated or unpickled. Every problem raises
``ModelFormatError`` saying what is wrong; ``load`` ends with ``verify`` so dangling references and
cycles are refused too.

Saving is atomic: a temporary file in the target's directory, fsync, ``os.replace``.
"""
from __future__ import annotations

import io
import json
import math
import mmap
import os
import stat
import struct
import sys
import tempfile
import zlib

import numpy as np

from ..errors import ModelFormatError
from . import dtypes
from .graph import Graph, Node, QuantParams, Value
from .verify import MAX_TENSOR_BYTES

#: PNG-style magic: the high byte catches 7-bit transfers, CR LF and LF catch newline conversion,
#: ^Z stops ``type`` on DOS.
MAGIC = b"\x89QINF\r\n\x1a"
#: The version this code writes. Versions MIN_READ_VERSION..FORMAT_VERSION are read (older ones
#: through ``_UPGRADES``).
FORMAT_VERSION = 3
MIN_READ_VERSION = 1
ALIGN = 64
#: tensors of fewer bytes are stored in the header (version 2 on), not as blobs
INLINE_BELOW = ALIGN
#: blobs of at least this many bytes are stored deflated (version 3 on) when the zlib stream is at
#: most DEFLATE_KEEP of them; a probe of the first DEFLATE_PROBE bytes at level 1 skips blobs
#: that will not shrink (float32 weights, random bytes) without compressing them whole
DEFLATE_FROM = 256
DEFLATE_KEEP = 7 / 8
DEFLATE_PROBE = 1 << 16
#: zlib's deflate format cannot expand a stream more than 1032 times; a record claiming more is
#: corrupted or hostile, refused before anything is allocated
MAX_BLOB_EXPANSION = 1032
#: magic, u32 format version, u32 flags, u64 header length, u32 crc32 of the header
_PREFIX = struct.Struct("<8sIIQI")
PREFIX_SIZE = _PREFIX.size  # 28
#: flag bit 0: the header is stored deflated (u64 length of the JSON, then a zlib stream); a
#: reader refuses any bit it does not know
FLAG_ZLIB_HEADER = 1
KNOWN_FLAGS = FLAG_ZLIB_HEADER
#: ``save`` deflates headers of at least this many bytes when that saves a quarter of them
COMPRESS_HEADER_FROM = 1024
#: a deflated header may expand at most this many times (+4 KiB): real headers expand 5-13x (a
#: header that would expand more is written plain), and the bound keeps what a file can make the
#: reader allocate within a small multiple of the file's size
MAX_HEADER_EXPANSION = 16
_HEADER_LEN = struct.Struct("<Q")

_MAX_RANK = 64          # numpy's limit
_MAX_DEPTH = 32         # nesting of attribute values
_MAX_ELEMENT_BYTES = 1 << 62   # so no shape overflows numpy's size computation

def _upgrade_1(header):
    """Version 1 -> 2: version 2 added tensors stored in the header; a version 1 file has none."""
    recs = header.get("tensors") if isinstance(header, dict) else None
    if isinstance(recs, list) and any(isinstance(t, dict) and "data" in t for t in recs):
        _bad("a version 1 file with a tensor stored in the header (version 2 added those): "
             "corrupted")
    return header


def _upgrade_2(header):
    """Version 2 -> 3: version 3 added deflated blobs; a version 2 file has none."""
    recs = header.get("tensors") if isinstance(header, dict) else None
    if isinstance(recs, list) and any(isinstance(t, dict) and "deflated" in t for t in recs):
        _bad("a version 2 file with a deflated tensor (version 3 added those): corrupted")
    return header


#: version -> function(header dict) -> header dict of version + 1; a reader of version N keeps
#: every step from MIN_READ_VERSION on.
_UPGRADES: dict = {1: _upgrade_1, 2: _upgrade_2}

_TENSOR_KEYS = frozenset({"name", "dtype", "shape", "offset", "nbytes", "crc32"})
_DEFLATED_KEYS = _TENSOR_KEYS | {"deflated"}
_INLINE_KEYS = frozenset({"name", "dtype", "shape", "data"})
_HEX = frozenset("0123456789abcdef")
_VALUE_KEYS = frozenset({"name", "dtype", "shape", "qparams"})
_QPARAM_KEYS = frozenset({"scale", "zero_point", "axis", "bits", "group_size"})
_NODE_KEYS = frozenset({"op", "name", "domain", "inputs", "outputs", "attrs"})
_HEADER_KEYS = frozenset({"producer", "producer_version", "graph_name", "metadata", "inputs",
                          "outputs", "value_info", "initializers", "nodes", "tensors",
                          "data_nbytes"})
_FLOAT_SPECIALS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _producer_version():
    try:
        import qinfer  # the package is already being imported when this runs
        v = getattr(qinfer, "__version__", None)
        return v if isinstance(v, str) and v else "unknown"
    except Exception:  # noqa: BLE001 - a half-initialized package must not break saving
        return "unknown"


# =====================================================================================  writing
class _Writer:
    """Turns a Graph into (header dict, list of blobs). Blob offsets are relative to the data
    section, so the header's length does not depend on them."""

    def __init__(self, deflate=False):
        self.deflate = deflate
        self.tensors = []          # header records
        self.blobs = []            # (record, contiguous little-endian bytes) of the blob records
        self.names = set()
        self.by_id = {}            # id(array) -> blob name, so a shared array is stored once
        self.keep = []             # keeps arrays alive so ids are not reused during the save
        self.offset = 0
        self.aux = 0
        self.reserved = set()      # initializer names, which auxiliary blobs must not take

    def add_blob(self, arr, name, where):
        if id(arr) in self.by_id:
            return self.by_id[id(arr)]
        dt = arr.dtype
        if dt.name not in dtypes.SUPPORTED or dt.fields is not None:
            raise ModelFormatError(f"cannot save {where}: dtype {dt!s} is not one of qinfer's "
                                   f"tensor types ({', '.join(sorted(dtypes.SUPPORTED))})")
        a = np.asarray(arr)    # (not ascontiguousarray: it turns 0-d arrays into 1-d ones)
        if not a.flags.c_contiguous:
            a = np.array(a, order="C")
        if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
            a = a.astype(a.dtype.newbyteorder("<"))
        flat = a.reshape(-1).view(np.uint8)
        if name is None:
            while f"__blob{self.aux}__" in self.names or f"__blob{self.aux}__" in self.reserved:
                self.aux += 1
            name = f"__blob{self.aux}__"
            self.aux += 1
        rec = {"name": name, "dtype": dt.name, "shape": [int(d) for d in a.shape]}
        if flat.nbytes < INLINE_BELOW:
            rec["data"] = flat.tobytes().hex()
        else:
            self.offset = _align(self.offset)
            stored = _deflated(flat) if self.deflate else None
            rec.update(offset=self.offset, nbytes=int(flat.nbytes))
            if stored is None:
                stored = flat
            else:
                rec["deflated"] = int(stored.nbytes)
            rec["crc32"] = zlib.crc32(stored) & 0xFFFFFFFF
            self.blobs.append((rec, stored))
            self.offset += stored.nbytes
        self.tensors.append(rec)
        self.names.add(name)
        self.by_id[id(arr)] = name
        self.keep.append(arr)
        return name

    def enc(self, v, where, depth=0):
        """A Python attribute / metadata / qparam value -> JSON value (see docs/formats.md)."""
        if depth > _MAX_DEPTH:
            raise ModelFormatError(f"cannot save {where}: values nested deeper than {_MAX_DEPTH}")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, np.ndarray):
            return {"__tensor__": self.add_blob(v, None, where)}
        if isinstance(v, np.generic):
            if v.dtype.name not in dtypes.SUPPORTED:
                raise ModelFormatError(f"cannot save {where}: numpy scalar of dtype {v.dtype} "
                                       "is not one of qinfer's tensor types")
            return {"__scalar__": [v.dtype.name, self.enc(v.item(), where, depth + 1)]}
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            f = float(v)
            if math.isfinite(f):
                return f
            return {"__float__": "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")}
        if isinstance(v, list):
            return [self.enc(x, where, depth + 1) for x in v]
        if isinstance(v, tuple):
            return {"__tuple__": [self.enc(x, where, depth + 1) for x in v]}
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise ModelFormatError(f"cannot save {where}: dict key {k!r} is not a string")
                out[k] = self.enc(x, f"{where}[{k!r}]", depth + 1)
            return {"__dict__": out}
        if isinstance(v, (bytes, bytearray)):
            return {"__bytes__": bytes(v).hex()}
        raise ModelFormatError(f"cannot save {where}: values of type {type(v).__name__} cannot "
                               "be stored (use int, float, str, bool, None, list, tuple, dict, "
                               "bytes or numpy arrays)")

    def value(self, v, where):
        if not isinstance(v, Value):
            raise ModelFormatError(f"cannot save {where}: expected a Value, got {type(v).__name__}")
        shape = None
        if v.shape is not None:
            shape = []
            for d in v.shape:
                if isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)):
                    d = int(d)
                    if not 0 <= d < 1 << 62:
                        raise ModelFormatError(f"cannot save {where} {v.name!r}: invalid "
                                               f"dimension {d} in shape {v.shape} (use None for "
                                               "unknown dimensions)")
                elif d is not None and not isinstance(d, str):
                    raise ModelFormatError(f"cannot save {where} {v.name!r}: dimension {d!r} "
                                           "is not an int, str or None")
                shape.append(d)
        q = None
        if v.qparams is not None:
            qp = v.qparams
            w = f"qparams of {where} {v.name!r}"
            q = {"scale": self.enc(qp.scale, w), "zero_point": self.enc(qp.zero_point, w),
                 "axis": self.enc(qp.axis, w), "bits": self.enc(qp.bits, w),
                 "group_size": self.enc(qp.group_size, w)}
        return {"name": v.name, "dtype": v.dtype, "shape": shape, "qparams": q}

    def header(self, graph):
        # initializers first, under their own names; auxiliary blobs get names none of them uses
        self.reserved = set(graph.initializers)
        for name, arr in graph.initializers.items():
            if not isinstance(arr, np.ndarray):
                raise ModelFormatError(f"cannot save initializer {name!r}: not a numpy array")
            if id(arr) in self.by_id:   # the same array object under two names: store it twice
                self.by_id.pop(id(arr))
            self.add_blob(arr, name, f"initializer {name!r}")
        nodes = []
        for i, n in enumerate(graph.nodes):
            where = f"node {n.name or i!r} ({n.op})"
            attrs = {}
            for k, a in n.attrs.items():
                if not isinstance(k, str):
                    raise ModelFormatError(f"cannot save {where}: attribute name {k!r} is "
                                           "not a str")
                attrs[k] = self.enc(a, f"attribute {k!r} of {where}")
            nodes.append({"op": n.op, "name": n.name, "domain": n.domain,
                          "inputs": list(n.inputs), "outputs": list(n.outputs), "attrs": attrs})
        meta = {}
        for k, v in graph.metadata.items():
            if not isinstance(k, str):
                raise ModelFormatError(f"cannot save metadata: key {k!r} is not a string")
            meta[k] = self.enc(v, f"metadata {k!r}")
        return {
            "producer": "qinfer",
            "producer_version": _producer_version(),
            "graph_name": graph.name,
            "metadata": meta,
            "inputs": [self.value(v, "graph input") for v in graph.inputs],
            "outputs": [self.value(v, "graph output") for v in graph.outputs],
            "value_info": [self.value(v, "value_info") for v in graph.value_info.values()],
            "initializers": list(graph.initializers),
            "nodes": nodes,
            "tensors": self.tensors,
            "data_nbytes": self.offset,
        }


def _deflated(flat):
    """The zlib stream of the bytes ``flat`` (a 1-D uint8 array) as a uint8 array, or None where
    deflating does not pay (see DEFLATE_FROM)."""
    if flat.nbytes < DEFLATE_FROM:
        return None
    probe = flat[:DEFLATE_PROBE]
    if len(zlib.compress(probe, 1)) > DEFLATE_KEEP * probe.nbytes:
        return None
    z = zlib.compress(flat, 9)
    if len(z) > DEFLATE_KEEP * flat.nbytes:
        return None
    return np.frombuffer(z, np.uint8)


def _write_blob(f, flat):
    """Write one blob (a 1-D uint8 view). A function of its own so tests can interrupt a save."""
    if flat.nbytes:
        f.write(memoryview(flat))


def _write(graph, f, deflate=False):
    from .verify import verify
    verify(graph)
    w = _Writer(deflate)
    head = json.dumps(w.header(graph), ensure_ascii=True, allow_nan=False,
                      separators=(",", ":")).encode("ascii")
    head, flags = _deflate_header(head)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, flags, len(head), zlib.crc32(head) & 0xFFFFFFFF)
    f.write(prefix)
    f.write(head)
    pos = PREFIX_SIZE + len(head)
    data_start = _align(pos)
    f.write(b"\0" * (data_start - pos))
    pos = 0
    for rec, flat in w.blobs:
        f.write(b"\0" * (rec["offset"] - pos))
        _write_blob(f, flat)
        pos = rec["offset"] + flat.nbytes


def _deflate_header(head):
    """(stored header bytes, flags): deflated when that is worth it, else ``head`` as is."""
    if len(head) < COMPRESS_HEADER_FROM:
        return head, 0
    z = _HEADER_LEN.pack(len(head)) + zlib.compress(head, 9)
    if len(z) * 4 > len(head) * 3 or len(head) > _max_inflated(len(z)):
        return head, 0
    return z, FLAG_ZLIB_HEADER


def _max_inflated(stored):
    return MAX_HEADER_EXPANSION * stored + 4096


def _inflate_header(head):
    """The JSON bytes of a deflated header (FLAG_ZLIB_HEADER), its declared length checked against
    the stream and against the expansion bound before anything is allocated."""
    if len(head) < _HEADER_LEN.size:
        _bad(f"deflated header of {len(head)} bytes is too short for its length field")
    size, = _HEADER_LEN.unpack(head[:_HEADER_LEN.size])
    if size > _max_inflated(len(head)):
        _bad(f"deflated header declares {size} bytes from {len(head)}: more than "
             f"{MAX_HEADER_EXPANSION}x, corrupted or hostile")
    d = zlib.decompressobj()
    try:
        out = d.decompress(head[_HEADER_LEN.size:], size)
    except zlib.error as e:
        _bad(f"deflated header does not inflate: {e}")
    if len(out) != size or not d.eof or d.unconsumed_tail or d.unused_data:
        _bad(f"deflated header inflates to other than its declared {size} bytes "
             f"({len(out)}{'' if d.eof else '+'}, {'complete' if d.eof else 'incomplete'} stream)")
    return out


def to_bytes(graph: Graph, deflate=False) -> bytes:
    """The ``.qinf`` bytes of ``graph`` (what ``save`` writes)."""
    buf = io.BytesIO()
    _write(graph, buf, deflate)
    return buf.getvalue()


def _umask():
    try:
        with open("/proc/self/status") as s:
            for line in s:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def save(graph: Graph, path, deflate=False) -> None:
    """Write ``graph`` to ``path`` atomically: a temporary file in the same directory is written,
    fsynced and renamed over ``path``, so a crash mid-save leaves any old file intact.
    ``deflate=True`` stores the blobs that deflate well as zlib streams (a smaller file; at load
    those are inflated into arrays of their own instead of being views of the mapping)."""
    path = os.fspath(path)
    if os.path.islink(path):
        path = os.path.realpath(path)   # replace the file the link points to, not the link
    d = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _write(graph, f, deflate)
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:   # make the rename itself durable (POSIX); best effort elsewhere
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# =====================================================================================  reading
def _bad(msg):
    raise ModelFormatError(msg)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _want(x, kind, where):
    ok = _is_int(x) if kind is int else isinstance(x, kind)
    if not ok:
        names = {int: "an integer", str: "a string", list: "a list", dict: "an object"}
        _bad(f"{where} must be {names.get(kind, kind)}, got {type(x).__name__}")
    return x


def _keys(obj, keys, where):
    _want(obj, dict, where)
    missing = keys - obj.keys()
    if missing:
        _bad(f"{where} lacks key(s) {sorted(missing)}")
    extra = obj.keys() - keys
    if extra:
        _bad(f"{where} has unknown key(s) {sorted(extra)} (written by a newer qinfer?)")
    return obj


def _no_dup_keys(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            _bad(f"header JSON repeats the key {k!r}")
        d[k] = v
    return d


def _no_constants(name):
    _bad(f"header JSON contains {name}, which is not JSON (non-finite floats are encoded as "
         '{"__float__": ...})')


def _parse_prefix(u8):
    """Checks the prefix and the header; returns (version, header dict, data_start)."""
    size = len(u8)
    if size < PREFIX_SIZE:
        _bad(f"file is {size} bytes, too short to be a .qinf file (the fixed prefix alone is "
             f"{PREFIX_SIZE} bytes): truncated or not a .qinf file")
    magic, version, flags, hlen, hcrc = _PREFIX.unpack(bytes(u8[:PREFIX_SIZE]))
    if magic != MAGIC:
        hint = ""
        if magic[:1] == b"\x08":
            hint = " (it looks like an ONNX file: convert it with qinfer.convert)"
        elif magic[1:5] == b"QINF":
            hint = " (the magic is damaged, e.g. by a text-mode transfer that rewrote line ends)"
        _bad(f"bad magic bytes {magic!r}, expected {MAGIC!r}: not a .qinf file{hint}")
    if version > FORMAT_VERSION:
        _bad(f"file format version {version} is newer than the newest this qinfer reads "
             f"(version {FORMAT_VERSION}): upgrade qinfer to load it")
    if version < MIN_READ_VERSION:
        _bad(f"file format version {version} is older than the oldest this qinfer reads "
             f"(version {MIN_READ_VERSION}; current is {FORMAT_VERSION}): re-create the file "
             "from the ONNX model")
    if flags & ~KNOWN_FLAGS:
        _bad(f"unknown flags 0x{flags:08x} in a version {version} file: corrupted, or written "
             "by a newer qinfer")
    if hlen > size - PREFIX_SIZE:
        _bad(f"header length {hlen} goes beyond the end of the file ({size} bytes): truncated "
             "or corrupted")
    head = bytes(u8[PREFIX_SIZE:PREFIX_SIZE + hlen])
    if zlib.crc32(head) & 0xFFFFFFFF != hcrc:
        _bad(f"header checksum mismatch (stored 0x{hcrc:08x}, computed "
             f"0x{zlib.crc32(head) & 0xFFFFFFFF:08x}): the file is corrupted")
    data_start = _align(PREFIX_SIZE + hlen)
    if data_start > size:
        _bad(f"file ends at byte {size}, inside the padding after the header (which ends at "
             f"{data_start}): truncated")
    if u8[PREFIX_SIZE + hlen:data_start].any():
        _bad("non-zero bytes in the padding after the header: corrupted")
    if flags & FLAG_ZLIB_HEADER:
        head = _inflate_header(head)
    try:
        text = head.decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_dup_keys, parse_constant=_no_constants)
    except ModelFormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _bad(f"header is not valid UTF-8 JSON: {e}")
    _want(header, dict, "header")
    while version < FORMAT_VERSION:   # upgrade path for older files
        header = _UPGRADES[version](header)
        version += 1
    return version, header, data_start


def _inflate_blob(stream, nbytes, where):
    """The ``nbytes`` bytes the zlib ``stream`` (uint8 array) holds, as a read-only uint8 array of
    its own, 64-byte aligned (the kernels read packed weights with aligned loads where they can);
    a stream that is damaged, or holds more or fewer bytes, is refused."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(stream, nbytes)
    except zlib.error as e:
        _bad(f"{where}: its deflated bytes do not inflate ({e}): corrupted")
    if len(out) != nbytes or not d.eof or d.unconsumed_tail or d.unused_data:
        _bad(f"{where}: its deflated bytes inflate to other than the declared {nbytes} bytes "
             f"({len(out)}{'' if d.eof else '+'}, {'complete' if d.eof else 'incomplete'} stream): "
             "corrupted")
    buf = np.empty(nbytes + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    arr = buf[start:start + nbytes]
    arr[:] = np.frombuffer(out, np.uint8)
    arr.flags.writeable = False
    return arr


def _check_bools(where, dtype, raw):
    """A bool tensor's bytes ``raw`` (uint8) are 0 or 1."""
    if dtype.kind == "b" and raw.size and raw.max() > 1:
        _bad(f"{where}: bool tensor holds bytes other than 0 and 1")


class _Reader:
    def __init__(self, u8, verify_checksums):
        self.u8 = u8
        self.verify_checksums = verify_checksums
        self.arrays = {}

    # --------------------------------------------------------------------------- tensors
    def tensors(self, header, data_start):
        size = len(self.u8)
        data_nbytes = _want(header["data_nbytes"], int, "header 'data_nbytes'")
        if data_nbytes < 0 or data_start + data_nbytes != size:
            _bad(f"file is {size} bytes but its header describes {data_start} + {data_nbytes} "
                 f"= {data_start + data_nbytes} bytes: truncated, or bytes appended")
        recs = _want(header["tensors"], list, "header 'tensors'")
        spans, inline, inflated = [], {}, 0
        for i, rec in enumerate(recs):
            in_header = isinstance(rec, dict) and "data" in rec
            deflated = isinstance(rec, dict) and "deflated" in rec and not in_header
            _keys(rec, _INLINE_KEYS if in_header else _DEFLATED_KEYS if deflated else _TENSOR_KEYS,
                  f"tensor record #{i}")
            name = _want(rec["name"], str, f"name of tensor #{i}")
            where = f"tensor {name!r}"
            if name in self.arrays or name in inline:
                _bad(f"duplicate tensor name {name!r} in the tensor table")
            dt = _want(rec["dtype"], str, f"dtype of {where}")
            if dt not in dtypes.SUPPORTED:
                _bad(f"{where} has unknown dtype {dt!r} "
                     f"(known: {', '.join(sorted(dtypes.SUPPORTED))})")
            dtype = np.dtype(dt).newbyteorder("<")
            shape = _want(rec["shape"], list, f"shape of {where}")
            if len(shape) > _MAX_RANK:
                _bad(f"{where} has rank {len(shape)}, more than {_MAX_RANK}")
            count, guard = 1, dtype.itemsize
            for d in shape:
                if not _is_int(d) or d < 0:
                    _bad(f"{where} has an invalid dimension {d!r} in shape {shape} "
                         "(dimensions are non-negative integers)")
                count *= d
                guard *= max(d, 1)
                if guard > _MAX_ELEMENT_BYTES:
                    _bad(f"{where} has absurd shape {shape}")
            if in_header:
                inline[name] = self._inline(rec, where, dtype, shape, count * dtype.itemsize)
                continue
            off = _want(rec["offset"], int, f"offset of {where}")
            nbytes = _want(rec["nbytes"], int, f"nbytes of {where}")
            crc = _want(rec["crc32"], int, f"crc32 of {where}")
            stored = _want(rec["deflated"], int, f"deflated size of {where}") if deflated else nbytes
            if off < 0 or stored < 0 or off + stored > data_nbytes:
                _bad(f"{where}: bytes [{off}, {off + stored}) of the data section lie outside it "
                     f"(it is {data_nbytes} bytes long, from file offset {data_start})")
            if off % ALIGN:
                _bad(f"{where}: offset {off} is not a multiple of {ALIGN}")
            if nbytes != count * dtype.itemsize:
                _bad(f"{where}: nbytes {nbytes} != {count} elements of shape {shape} x "
                     f"{dtype.itemsize} bytes ({dt})")
            if not 0 <= crc <= 0xFFFFFFFF:
                _bad(f"{where}: crc32 {crc} is not a 32-bit value")
            if deflated:
                # (the smallest zlib stream is 8 bytes; none inflates more than 1032 times)
                if stored < 8 or nbytes == 0 or nbytes > stored * MAX_BLOB_EXPANSION:
                    _bad(f"{where}: a {stored}-byte zlib stream cannot hold {nbytes} bytes "
                         f"(deflate expands at most {MAX_BLOB_EXPANSION}x): corrupted or hostile")
                inflated += nbytes
            spans.append((off, stored, name))
            self.arrays[name] = (dtype, tuple(shape), off, nbytes, crc, stored if deflated else None)
        # blobs may come in any order but must not overlap, and every byte between them is zero
        spans.sort()
        pos = 0
        for off, nbytes, name in spans:
            if off < pos:
                _bad(f"tensor {name!r} overlaps the tensor before it in the data section")
            if off > pos and self.u8[data_start + pos:data_start + off].any():
                _bad(f"non-zero padding before tensor {name!r}: corrupted")
            pos = off + nbytes
        if pos < data_nbytes and self.u8[data_start + pos:].any():
            _bad("non-zero bytes after the last tensor: corrupted")
        if inflated > MAX_TENSOR_BYTES:
            _bad(f"deflated tensors inflate to {inflated} bytes, more than half of this machine's "
                 "memory: corrupted or hostile")
        for name, (dtype, shape, off, nbytes, crc, stored) in list(self.arrays.items()):
            raw = self.u8[data_start + off:data_start + off + (nbytes if stored is None else stored)]
            if self.verify_checksums and zlib.crc32(raw) & 0xFFFFFFFF != crc:
                _bad(f"tensor {name!r}: checksum mismatch (its bytes are corrupted)")
            if stored is not None:
                raw = _inflate_blob(raw, nbytes, f"tensor {name!r}")
            _check_bools(f"tensor {name!r}", dtype, raw)
            self.arrays[name] = raw.view(dtype).reshape(shape)
        self.arrays.update(inline)

    @staticmethod
    def _inline(rec, where, dtype, shape, nbytes):
        """The read-only array of a tensor stored in the header (lowercase hex of its bytes)."""
        data = _want(rec["data"], str, f"data of {where}")
        if nbytes >= INLINE_BELOW:
            _bad(f"{where}: {nbytes} bytes stored in the header (only tensors of fewer than "
                 f"{INLINE_BELOW} bytes are; larger ones are blobs)")
        if len(data) != 2 * nbytes or not _HEX.issuperset(data):
            _bad(f"{where}: data must be {2 * nbytes} lowercase hex digits ({nbytes} bytes of "
                 f"shape {list(shape)}), got {len(data)} characters")
        raw = np.frombuffer(bytes.fromhex(data), np.uint8)
        _check_bools(where, dtype, raw)
        return raw.view(dtype).reshape(shape)

    # --------------------------------------------------------------------------- values
    def dec(self, j, where, depth=0):
        if depth > _MAX_DEPTH:
            _bad(f"{where}: values nested deeper than {_MAX_DEPTH}")
        if j is None or isinstance(j, (bool, int, str)):
            return j
        if isinstance(j, float):
            return j
        if isinstance(j, list):
            return [self.dec(x, where, depth + 1) for x in j]
        if len(j) != 1:
            _bad(f"{where}: a JSON object in a value must have exactly one tag key, got "
                 f"{sorted(j)[:5]}")
        (tag, v), = j.items()
        if tag == "__tensor__":
            _want(v, str, f"{where}: tensor reference")
            if v not in self.arrays:
                _bad(f"{where} refers to tensor {v!r}, which is not in the tensor table")
            return self.arrays[v]
        if tag == "__float__":
            if not isinstance(v, str) or v not in _FLOAT_SPECIALS:
                _bad(f"{where}: __float__ must be one of {sorted(_FLOAT_SPECIALS)}, got {v!r}")
            return _FLOAT_SPECIALS[v]
        if tag == "__tuple__":
            return tuple(self.dec(x, where, depth + 1) for x in _want(v, list, where))
        if tag == "__dict__":
            return {k: self.dec(x, where, depth + 1) for k, x in _want(v, dict, where).items()}
        if tag == "__bytes__":
            try:
                return bytes.fromhex(_want(v, str, where))
            except ValueError:
                _bad(f"{where}: __bytes__ is not a hex string")
        if tag == "__scalar__":
            if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)):
                _bad(f"{where}: __scalar__ must be [dtype, value]")
            dt, x = v[0], self.dec(v[1], where, depth + 1)
            if dt not in dtypes.SUPPORTED:
                _bad(f"{where}: scalar has unknown dtype {dt!r}")
            kind = np.dtype(dt).kind
            ok = (isinstance(x, bool) if kind == "b" else _is_int(x) if kind in "iu"
                  else isinstance(x, (int, float)) and not isinstance(x, bool))
            if not ok:
                _bad(f"{where}: {x!r} is not a {dt} value")
            try:
                with np.errstate(over="raise", invalid="raise"):
                    return np.dtype(dt).type(x)
            except (OverflowError, ValueError, FloatingPointError):
                _bad(f"{where}: {x!r} is out of range for {dt}")
        _bad(f"{where}: unknown value tag {tag!r}")

    def value(self, j, where):
        _keys(j, _VALUE_KEYS, where)
        name = _want(j["name"], str, f"{where}: name")
        where = f"{where} {name!r}"
        dt = j["dtype"]
        if dt is not None:
            _want(dt, str, f"{where}: dtype")
            if dt not in dtypes.SUPPORTED:
                _bad(f"{where} has unknown dtype {dt!r}")
        shape = j["shape"]
        if shape is not None:
            _want(shape, list, f"{where}: shape")
            if len(shape) > _MAX_RANK:
                _bad(f"{where} has rank {len(shape)}, more than {_MAX_RANK}")
            for d in shape:
                if not (d is None or isinstance(d, str) or (_is_int(d) and 0 <= d < 1 << 62)):
                    _bad(f"{where} has an invalid dimension {d!r} (expected a non-negative "
                         "int, a symbolic name or null)")
            shape = tuple(shape)
        q = j["qparams"]
        if q is not None:
            _keys(q, _QPARAM_KEYS, f"qparams of {where}")
            w = f"qparams of {where}"
            q = QuantParams(scale=self.dec(q["scale"], w), zero_point=self.dec(q["zero_point"], w),
                            axis=self.dec(q["axis"], w), bits=self.dec(q["bits"], w),
                            group_size=self.dec(q["group_size"], w))
        return Value(name, dt, shape, q)

    def node(self, j, i):
        _keys(j, _NODE_KEYS, f"node #{i}")
        op = _want(j["op"], str, f"op of node #{i}")
        name = _want(j["name"], str, f"name of node #{i}")
        where = f"node {name or i!r} ({op})"
        domain = _want(j["domain"], str, f"domain of {where}")
        ins = tuple(_want(x, str, f"input of {where}") for x in _want(j["inputs"], list, where))
        outs = tuple(_want(x, str, f"output of {where}") for x in _want(j["outputs"], list, where))
        attrs = {k: self.dec(v, f"attribute {k!r} of {where}")
                 for k, v in _want(j["attrs"], dict, f"attrs of {where}").items()}
        return Node(op, ins, outs, attrs, name, domain)

    def graph(self, header, data_start):
        _keys(header, _HEADER_KEYS, "header")
        _want(header["producer"], str, "header 'producer'")
        _want(header["producer_version"], str, "header 'producer_version'")
        gname = _want(header["graph_name"], str, "header 'graph_name'")
        self.tensors(header, data_start)
        inits = {}
        for n in _want(header["initializers"], list, "header 'initializers'"):
            _want(n, str, "initializer name")
            if n in inits:
                _bad(f"duplicate initializer {n!r}")
            if n not in self.arrays:
                _bad(f"initializer {n!r} is not in the tensor table")
            inits[n] = self.arrays[n]
        metadata = {_want(k, str, "metadata key"): self.dec(v, f"metadata {k!r}")
                    for k, v in _want(header["metadata"], dict, "header 'metadata'").items()}
        inputs = [self.value(v, "graph input") for v in _want(header["inputs"], list, "inputs")]
        outputs = [self.value(v, "graph output") for v in _want(header["outputs"], list, "outputs")]
        vinfo = {}
        for v in _want(header["value_info"], list, "value_info"):
            v = self.value(v, "value_info")
            if v.name in vinfo:
                _bad(f"duplicate value_info entry {v.name!r}")
            vinfo[v.name] = v
        nodes = [self.node(n, i) for i, n in enumerate(_want(header["nodes"], list, "nodes"))]
        return Graph(gname, nodes, inputs, outputs, inits, vinfo, metadata)


def _read(u8, verify_checksums):
    from .verify import verify
    try:
        _, header, data_start = _parse_prefix(u8)
        g = _Reader(u8, verify_checksums).graph(header, data_start)
        verify(g)
    except ModelFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError,
            AttributeError, struct.error) as e:   # a safety net: the checks above fire first
        raise ModelFormatError(f"malformed header ({type(e).__name__}: {e})") from e
    return g


def _located(e, where):
    err = ModelFormatError(f"{where}: {e}")
    if hasattr(e, "problems"):
        err.problems = e.problems
    return err


def from_bytes(data) -> Graph:
    """Parse ``.qinf`` bytes. Initializers are read-only views of ``data`` (no copy)."""
    try:
        u8 = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"cannot read .qinf data from {type(data).__name__}: {e}") from e
    u8.flags.writeable = False
    try:
        return _read(u8, True)
    except ModelFormatError as e:
        raise _located(e, "<bytes>") from e


def _open_regular(path):
    """Open ``path`` for reading if it is a regular file (a FIFO or device could block or never
    end); returns (file, size)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        _bad(f"{kind}, expected a .qinf file")
    f = open(path, "rb")
    size = os.fstat(f.fileno()).st_size
    if size < PREFIX_SIZE:
        f.close()
        _bad(f"file is {size} bytes, too short to be a .qinf file: truncated or not a .qinf file")
    return f, size


def load(path, verify_checksums=True) -> Graph:
    """Memory-map a ``.qinf`` file. Initializers are read-only numpy views of one mapping, which
    stays alive as long as any of them is referenced. ``verify_checksums=False`` skips the tensor
    crc32s (the header's is always checked)."""
    path = os.fspath(path)
    try:
        f, _ = _open_regular(path)
        with f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except ModelFormatError as e:
        raise _located(e, path) from e
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"cannot open {path!r}: {e}") from e
    u8 = np.frombuffer(mm, dtype=np.uint8)
    try:
        return _read(u8, verify_checksums)
    except ModelFormatError as e:
        raise _located(e, path) from e


def read_header(path) -> dict:
    """The checked JSON header of a ``.qinf`` file, with ``format_version`` added (for
    ``qinfer inspect``); tensors are neither read nor checked."""
    path = os.fspath(path)
    try:
        f, _ = _open_regular(path)
        with f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            version, header, _ = _parse_prefix(np.frombuffer(mm, dtype=np.uint8))
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as e:
            _bad(f"malformed header ({type(e).__name__}: {e})")
    except ModelFormatError as e:
        raise _located(e, path) from e
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"cannot open {path!r}: {e}") from e
    header = dict(header)
    header["format_version"] = version
    return header
