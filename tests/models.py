"""Real models for the tests and benches: builders that return cached .onnx paths.

Design: every builder returns the path of an ONNX file in qinfer's cache
directory (``QINFER_CACHE_DIR``, default ``~/.cache/qinfer``), under
``test-models/``. A file is built only when it is missing, under a per-model
file lock, and written to a temporary name then renamed, so concurrent test
workers never see half a file. Cached names carry a version suffix: bump it
when a builder changes so stale caches are not reused.

Three families:

* PP-OCRv4 detection / recognition and the PP-OCR direction classifier,
  extracted from the ``rapidocr-onnxruntime`` wheel (downloaded with
  ``pip download``, never installed). No network -> ``ModelUnavailable``.
* Architectures written here in torch (there is no torchvision) and exported
  with the TorchScript exporter at opset 17: ResNet-18, MobileNetV2 and a
  small transformer encoder. Random weights with a fixed seed; BatchNorm
  affine parameters are randomised and running statistics are measured on
  real images, so BN folding is exercised with non-trivial values.
* Two classifiers trained on scikit-learn's bundled digits (a CNN on 8x8
  images and an MLP on the digits upsampled to 28x28); the builders return
  the model with the fixed test split and the float accuracy measured at
  training time.

Inputs are realistic: scikit-image's bundled photos and its ``page`` scan of
printed text, preprocessed the way PaddleOCR / torchvision do.

This module imports torch and onnx lazily, so a bench or test that only needs
cached files pays for neither.
"""
import contextlib
import glob
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from typing import NamedTuple

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: fall back to no locking
    fcntl = None

OPSET = 17


class ModelUnavailable(RuntimeError):
    """A model cannot be obtained here (no network); tests skip on it."""


# ----------------------------------------------------------------------------
# cache

def cache_dir():
    try:
        from qinfer._config import cache_dir as _qinfer_cache_dir
    except Exception:  # qinfer not importable yet: same rule as qinfer._config
        d = os.environ.get("QINFER_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "qinfer")
        os.makedirs(d, exist_ok=True)
        return d
    return _qinfer_cache_dir()


def models_dir():
    d = os.path.join(cache_dir(), "test-models")
    os.makedirs(d, exist_ok=True)
    return d


@contextlib.contextmanager
def _build_lock(name):
    """Exclusive lock so that parallel workers build a model once."""
    if fcntl is None:
        yield
        return
    with open(os.path.join(models_dir(), "." + name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tmp_name(path):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-",
                               suffix=os.path.basename(path))
    os.close(fd)
    return tmp


def _atomic_write_bytes(path, data):
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _cached(filename, build, extra=()):
    """Path of ``filename`` in the model cache; ``build(tmp_path)`` makes it if missing.

    ``extra`` names side files (written by ``build`` itself, atomically) that
    must exist too.
    """
    path = os.path.join(models_dir(), filename)
    wanted = [path] + [os.path.join(models_dir(), e) for e in extra]
    if all(os.path.exists(p) for p in wanted):
        return path
    with _build_lock(filename):
        if all(os.path.exists(p) for p in wanted):
            return path
        tmp = _tmp_name(path)
        try:
            build(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


# ----------------------------------------------------------------------------
# PP-OCR (rapidocr-onnxruntime wheel)

PPOCR_WHEEL = "rapidocr-onnxruntime==1.4.4"
PPOCR_MEMBER_DIR = "rapidocr_onnxruntime/models/"
PPOCR_FILES = {
    "det": ("ch_PP-OCRv4_det_infer.onnx",
            "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx",
            "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"),
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
}
PIP_TIMEOUT_S = 300
_ppocr_unavailable = []    # the first failure, so a test run asks pip once, not once per test


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _fetch_ppocr():
    """Download the wheel once and extract the three models into the cache."""
    with tempfile.TemporaryDirectory() as td:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--disable-pip-version-check", "--no-input",
               "--timeout", "30", "--retries", "2", PPOCR_WHEEL, "-d", td]
        why = "PyPI unreachable: cannot fetch rapidocr-onnxruntime wheel"
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ModelUnavailable("%s (pip download timed out after %d s)" % (why, PIP_TIMEOUT_S))
        except OSError as e:
            raise ModelUnavailable("%s (%s)" % (why, e))
        wheels = glob.glob(os.path.join(td, "*.whl"))
        if r.returncode != 0 or not wheels:
            tail = (r.stderr or r.stdout or "").strip().splitlines()[-1:]
            raise ModelUnavailable("%s: %s" % (why, tail[0] if tail else "pip exit %d" % r.returncode))
        with zipfile.ZipFile(wheels[0]) as z:
            for filename, sha in PPOCR_FILES.values():
                data = z.read(PPOCR_MEMBER_DIR + filename)
                if _sha256(data) != sha:
                    raise RuntimeError("%s from %s has sha256 %s, expected %s"
                                       % (filename, PPOCR_WHEEL, _sha256(data), sha))
                dest = os.path.join(models_dir(), filename)
                if not os.path.exists(dest):
                    _atomic_write_bytes(dest, data)


def ppocr_model(kind):
    """Path of the PP-OCR ``"det"``, ``"rec"`` or ``"cls"`` ONNX file."""
    filename = PPOCR_FILES[kind][0]
    path = os.path.join(models_dir(), filename)
    if not os.path.exists(path):
        if _ppocr_unavailable:
            raise ModelUnavailable(_ppocr_unavailable[0])
        with _build_lock("ppocr"):
            if not os.path.exists(path):
                try:
                    _fetch_ppocr()
                except ModelUnavailable as e:
                    _ppocr_unavailable.append(str(e))
                    raise
    return path


def ppocr_det():
    return ppocr_model("det")


def ppocr_rec():
    return ppocr_model("rec")


def ppocr_cls():
    return ppocr_model("cls")


# ----------------------------------------------------------------------------
# realistic inputs

# (top, bottom, left, right) boxes around printed phrases of skimage.data.page().
PAGE_LINES = [
    (8, 40, 0, 150),     # "Region-based"
    (44, 67, 0, 163),    # "Let us first determine"
    (63, 85, 0, 131),    # "background. These"
    (99, 123, 0, 157),   # "the markers are found"
]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _rgb(img):
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img


def _photos():
    import skimage.data as d
    return [d.astronaut(), d.chelsea(), d.coffee(), d.rocket()]


def _resize(img, w, h):
    from PIL import Image
    return np.asarray(Image.fromarray(_rgb(img)).resize((w, h), Image.BILINEAR))


def _imagenet_norm(img_hwc_u8):
    x = (img_hwc_u8.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return x.transpose(2, 0, 1)


def imagenet_input(batch=1, h=224, w=224):
    """[batch, 3, h, w] float32 photos normalised like torchvision's ImageNet models."""
    photos = _photos()
    return np.stack([_imagenet_norm(_resize(photos[i % len(photos)], w, h))
                     for i in range(batch)]).astype(np.float32)


def det_input(batch=1, h=640, w=640):
    """[batch, 3, h, w] for PP-OCR detection: the page scan (then photos), PaddleOCR det normalisation."""
    import skimage.data as d
    imgs = [d.page(), d.text()] + _photos()
    return np.stack([_imagenet_norm(_resize(imgs[i % len(imgs)], w, h))
                     for i in range(batch)]).astype(np.float32)


def _text_line(i):
    import skimage.data as d
    t, b, l, r = PAGE_LINES[i % len(PAGE_LINES)]
    return d.page()[t:b, l:r]


def _rec_norm(crop, height, width):
    """PaddleOCR resize_norm_img: keep aspect up to ``width``, (x/255-0.5)/0.5, zero pad right."""
    h, w = crop.shape[:2]
    rw = min(width, int(math.ceil(height * w / float(h))))
    img = _resize(crop, rw, height).astype(np.float32)
    x = ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :rw] = x
    return out


def rec_input(batch=1, width=320):
    """[batch, 3, 48, width]: printed text lines of skimage's page scan."""
    return np.stack([_rec_norm(_text_line(i), 48, width) for i in range(batch)])


def cls_input(batch=1):
    """[batch, 3, 48, 192]: text lines, every odd one rotated by 180 degrees."""
    crops = []
    for i in range(batch):
        c = _text_line(i // 2)
        crops.append(c[::-1, ::-1] if i % 2 else c)
    return np.stack([_rec_norm(c, 48, 192) for c in crops])


def ctc_decode(probs, characters):
    """Greedy CTC decode of rec output [N, T, C] (class 0 = blank, last = space)."""
    chars = ["<blank>"] + list(characters) + [" "]
    out = []
    for seq in probs.argmax(-1):
        s, prev = [], 0
        for k in seq:
            if k != prev and k != 0:
                s.append(chars[k] if k < len(chars) else "?")
            prev = k
        out.append("".join(s))
    return out


def rec_characters(path):
    """The character list stored in the rec model's metadata ('character' key)."""
    import onnx
    m = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    return meta["character"].splitlines()


TRANSFORMER_FEATURES = 16


def transformer_input(rng, batch=1, seq=16):
    """[batch, seq, 16] float32 standard normal features."""
    return rng.standard_normal((batch, seq, TRANSFORMER_FEATURES)).astype(np.float32)


# ----------------------------------------------------------------------------
# torch architectures (defined lazily so importing this module needs no torch)

def _torch_modules():
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, inp, out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(out)
            self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inp != out:
                self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False),
                                                nn.BatchNorm2d(out))

        def forward(self, x):
            idn = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + idn)

    class ResNet18(nn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, inp = [], 64
            for i, width in enumerate([64, 128, 256, 512]):
                stride = 1 if i == 0 else 2
                layers.append(nn.Sequential(BasicBlock(inp, width, stride), BasicBlock(width, width, 1)))
                inp = width
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    def conv_bn(inp, out, k, stride, groups=1, act=True):
        layers = [nn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(out)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return layers

    class InvertedResidual(nn.Module):
        def __init__(self, inp, out, stride, expand):
            super().__init__()
            hidden = inp * expand
            self.use_res = stride == 1 and inp == out
            layers = []
            if expand != 1:
                layers += conv_bn(inp, hidden, 1, 1)
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)   # depthwise 3x3
            layers += conv_bn(hidden, out, 1, 1, act=False)                # linear bottleneck
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
        # (expansion t, channels c, repeats n, first stride s), width 1.0
        CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

        def __init__(self, num_classes=1000):
            super().__init__()
            layers, inp = conv_bn(3, 32, 3, 2), 32
            for t, c, n, s in self.CFG:
                for i in range(n):
                    layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            layers += conv_bn(inp, 1280, 1, 1)
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    class SelfAttention(nn.Module):
        # Written with explicit MatMul / Softmax so the export shows them (no fused MHA).
        def __init__(self, d, heads):
            super().__init__()
            self.h, self.dh = heads, d // heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x):
            b, s = x.shape[0], x.shape[1]

            def split(t):
                return t.reshape(b, s, self.h, self.dh).transpose(1, 2)   # [b, h, s, dh]

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            att = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.dh)), dim=-1)
            y = torch.matmul(att, v).transpose(1, 2).reshape(b, s, self.h * self.dh)
            return self.o(y)

    class EncoderLayer(nn.Module):
        def __init__(self, d, heads, d_ff):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = SelfAttention(d, heads)
            self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.ff(self.ln2(x))

    class TinyTransformer(nn.Module):
        def __init__(self, features=TRANSFORMER_FEATURES, d=64, heads=4, layers=2, d_ff=128,
                     max_seq=128, num_classes=10):
            super().__init__()
            self.embed = nn.Linear(features, d)
            self.pos = nn.Parameter(torch.randn(1, max_seq, d) * 0.1)
            self.layers = nn.ModuleList(EncoderLayer(d, heads, d_ff) for _ in range(layers))
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, num_classes)

        def forward(self, x):
            h = self.embed(x) + self.pos[:, : x.shape[1]]
            for layer in self.layers:
                h = layer(h)
            h = self.ln(h)
            return h, self.head(h.mean(dim=1))

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.MaxPool2d(2))
            self.fc = nn.Linear(32 * 4 * 4, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.body(x), 1))

    class DigitsMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                                     nn.ReLU(), nn.Linear(1024, 10))

        def forward(self, x):
            return self.net(x)

    return dict(ResNet18=ResNet18, MobileNetV2=MobileNetV2, TinyTransformer=TinyTransformer,
                DigitsCNN=DigitsCNN, DigitsMLP=DigitsMLP)


def _export(model, args, path, input_names, output_names, dynamic_axes, metadata,
            constant_folding=True):
    """TorchScript export at OPSET, then stamp metadata (custom_metadata_map) into the file."""
    import onnx
    import torch
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=constant_folding)
    m = onnx.load(path)
    onnx.helper.set_model_props(m, dict(metadata))
    m.doc_string = "qinfer test model: " + metadata.get("qinfer.fixture", "")
    onnx.checker.check_model(m)
    onnx.save(m, path)


def _calibrate_bn(model, batches, seed):
    """Randomise BN affine params, then measure running stats on ``batches`` in train mode."""
    import torch
    from torch import nn
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)      # U(0.5, 1.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
            bn.reset_running_stats()
            bn.momentum = None                                                   # cumulative average
        model.train()
        for x in batches:
            model(torch.from_numpy(x))
    model.eval()


def _photo_batches(h=224, w=224):
    # Two batches of 4 different photos / crops, so running stats come from real images.
    a = imagenet_input(4, h, w)
    return [a, a[:, :, ::-1, ::-1].copy()]


def _build_cnn(cls_name, seed, path, name, fold_bn_at_export):
    import torch
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _torch_modules()[cls_name]()
        _calibrate_bn(model, _photo_batches(), seed)
        dyn = {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}
        _export(model, (torch.from_numpy(imagenet_input(1)),), path, ["input"], ["logits"], dyn,
                {"qinfer.fixture": name, "classes": "1000", "seed": str(seed)},
                constant_folding=fold_bn_at_export)


def resnet18():
    """ResNet-18 shaped CNN, 224x224 input, dynamic batch/height/width.

    Exported without constant folding, so the BatchNormalization nodes stay in
    the graph (the engine must fold or run them).
    """
    return _cached("resnet18-v1.onnx",
                   lambda p: _build_cnn("ResNet18", 18, p, "resnet18", fold_bn_at_export=False))


def mobilenetv2():
    """MobileNetV2 (width 1.0), dynamic batch/height/width; BN folded by the exporter (Conv + Clip)."""
    return _cached("mobilenetv2-v1.onnx",
                   lambda p: _build_cnn("MobileNetV2", 2, p, "mobilenetv2", fold_bn_at_export=True))


def transformer():
    """2-layer encoder, d_model 64, 4 heads; input x[batch, seq, 16]; outputs hidden[b,s,64], logits[b,10]."""
    def build(path):
        import torch
        with torch.random.fork_rng():
            torch.manual_seed(64)
            model = _torch_modules()["TinyTransformer"]()
            x = torch.randn(2, 16, TRANSFORMER_FEATURES)
            dyn = {"x": {0: "batch", 1: "seq"}, "hidden": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
            _export(model, (x,), path, ["x"], ["hidden", "logits"], dyn,
                    {"qinfer.fixture": "transformer", "d_model": "64", "heads": "4"})
    return _cached("transformer-v1.onnx", build)


# ----------------------------------------------------------------------------
# digits classifiers, trained here

class DigitsModel(NamedTuple):
    path: str              # .onnx, input "input", output "logits", dynamic batch
    x_test: np.ndarray     # float32 [N, 1, 8, 8] (cnn) or [N, 784] (mlp)
    y_test: np.ndarray     # int64 [N]
    float_accuracy: float  # torch float accuracy on the test split, measured at training time
    train_seconds: float


def digits_split():
    """load_digits scaled to [0, 1], split with train_test_split(test_size=0.25, random_state=0).

    Returns x_train, x_test [N, 1, 8, 8] float32 and y_train, y_test int64.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    return x_train, x_test, y_train, y_test


def _linear_resize_matrix(n_out, n_in):
    """[n_out, n_in] weights of 1-D linear resampling, half-pixel centres (torch align_corners=False)."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        a[i, i0] += 1.0 - (src - i0)
        a[i, i1] += src - i0
    return a


def digits_28(x8):
    """[N, 1, 8, 8] -> [N, 784]: bilinear upsampling to 28x28 (as torch's, no torch needed), flattened."""
    a = _linear_resize_matrix(28, 8)
    up = np.einsum("ij,njk,lk->nil", a, x8[:, 0].astype(np.float64), a)
    return up.reshape(len(x8), 784).astype(np.float32)


def _train(model, x, y, epochs, lr, batch, seed):
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(len(x) / batch))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


def _build_digits(kind, seed, epochs, lr, batch):
    name = "digits-%s-v2" % kind
    meta_name = name + ".json"
    x_train, x_test, y_train, y_test = digits_split()
    if kind == "mlp":
        x_train, x_test = digits_28(x_train), digits_28(x_test)

    def build(path):
        import torch
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = _torch_modules()["DigitsCNN" if kind == "cnn" else "DigitsMLP"]()
            t0 = time.perf_counter()
            _train(model, x_train, y_train, epochs, lr, batch, seed)
            secs = time.perf_counter() - t0
            with torch.no_grad():
                acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
            if acc <= 0.95:
                raise RuntimeError("digits %s trained to only %.4f test accuracy" % (kind, acc))
            _export(model, (torch.from_numpy(x_test[:1]),), path, ["input"], ["logits"],
                    {"input": {0: "batch"}, "logits": {0: "batch"}},
                    {"qinfer.fixture": name, "float_accuracy": "%.6f" % acc})
            meta = {"float_accuracy": acc, "train_seconds": secs, "epochs": epochs,
                    "torch": torch.__version__}
            _atomic_write_bytes(os.path.join(models_dir(), meta_name),
                                json.dumps(meta, indent=1).encode())

    path = _cached(name + ".onnx", build, extra=[meta_name])
    with open(os.path.join(models_dir(), meta_name)) as f:
        meta = json.load(f)
    return DigitsModel(path, x_test, y_test, meta["float_accuracy"], meta["train_seconds"])


def digits_cnn():
    """conv-bn-relu x2, maxpool, linear on [N, 1, 8, 8]."""
    return _build_digits("cnn", seed=8, epochs=30, lr=3e-3, batch=32)


def digits_mlp():
    """784-1024-1024-10 MLP on digits upsampled to 28x28, input [N, 784]."""
    return _build_digits("mlp", seed=28, epochs=12, lr=1e-3, batch=64)


BUILDERS = {
    "ppocr_det": ppocr_det, "ppocr_rec": ppocr_rec, "ppocr_cls": ppocr_cls,
    "resnet18": resnet18, "mobilenetv2": mobilenetv2, "transformer": transformer,
    "digits_cnn": lambda: digits_cnn().path, "digits_mlp": lambda: digits_mlp().path,
}


WORDS = ("quantized inference engine model layer kernel accuracy float integer channel tensor "
         "scale zero point network image text detection recognition vector memory thread speed "
         "OCR 2026 ResNet batch 640x480 v4.1 CPU AVX-512 size weight bias (int8) 99.5% $12.40").split()


def rendered_text_crops(n, seed=0, height=48):
    """``n`` (crop uint8 [h, w, 3], text) pairs: random phrases drawn with Pillow's bundled font
    in random sizes, ink and paper shades, with slight blur and noise (the shipped page scan has
    only a few lines)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        size = int(rng.integers(22, 34))
        font = ImageFont.load_default(size=size)
        l, t, r, b = font.getbbox(text)
        pad = int(rng.integers(4, 10))
        paper = int(rng.integers(190, 256))
        ink = int(rng.integers(0, 70))
        img = Image.new("RGB", (r - l + 2 * pad, b - t + 2 * pad), (paper,) * 3)
        ImageDraw.Draw(img).text((pad - l, pad - t), text, fill=(ink,) * 3, font=font)
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(0.6))
        a = np.asarray(img).astype(np.float32) + rng.normal(0, 4, (img.height, img.width, 1))
        out.append((np.clip(a, 0, 255).astype(np.uint8), text))
    return out


def text_scenes(n, h=640, w=640, seed=0):
    """[n, 3, h, w] detection input (PaddleOCR det normalisation): the shipped photos and page scan
    with several lines of random phrases drawn on them (Pillow's bundled font, random sizes, ink,
    positions; some on a paper-coloured band, some straight on the picture), so every image
    contains text."""
    from PIL import Image, ImageDraw, ImageFont
    import skimage.data as d
    rng = np.random.default_rng(seed)
    bases = _photos() + [d.page(), d.text()]
    out = []
    for i in range(n):
        img = Image.fromarray(_resize(bases[i % len(bases)], w, h))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 7))):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5))))
            font = ImageFont.load_default(size=int(rng.integers(18, 40)))
            l, t, r, b = font.getbbox(text)
            x = int(rng.integers(0, max(1, w - (r - l))))
            y = int(rng.integers(0, max(1, h - (b - t))))
            ink = tuple(int(v) for v in rng.integers(0, 80, 3))
            if rng.random() < 0.6:
                paper = tuple(int(v) for v in rng.integers(180, 256, 3))
                draw.rectangle((x + l - 4, y + t - 4, x + r + 4, y + b + 4), fill=paper)
            elif rng.random() < 0.5:
                ink = tuple(int(v) for v in rng.integers(200, 256, 3))
            draw.text((x, y), text, fill=ink, font=font)
        out.append(_imagenet_norm(np.asarray(img)))
    return np.stack(out).astype(np.float32)


def rendered_rec_input(n, seed=0, width=320):
    """([n, 3, 48, width] rec input of ``rendered_text_crops``, texts)."""
    crops = rendered_text_crops(n, seed)
    return np.stack([_rec_norm(c, 48, width) for c, _ in crops]), [t for _, t in crops]
