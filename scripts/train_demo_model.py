"""Train the bundled demo model of ``qinfer benchmark``: a small CNN on scikit-learn's digits.

Design: the demo must show real accuracy next to the speed with nothing to download, so it is a
model trained on a data set that ships inside scikit-learn (1797 8x8 grey images of the digits 0-9).
The split is scikit-learn's ``train_test_split(test_size=0.25, random_state=0)`` of the images
scaled to [0, 1] (the same split as the test fixture ``tests/models.py:digits_split``). Training is
deterministic: fixed seeds, one torch thread, deterministic algorithms, so rerunning this script on
the same machine and torch version writes the same weights.

Writes, into ``src/qinfer/data/`` (the package data; the package itself needs neither torch nor
scikit-learn at run time):

* ``digits_cnn.onnx``   conv-bn-relu x2, maxpool, linear; input ``input`` float32 [batch, 1, 8, 8],
                        output ``logits`` [batch, 10]; BatchNorm folded by the exporter; opset 17.
* ``digits_test.npz``   the test split: ``x`` float32 [450, 1, 8, 8], ``y`` int64 [450] (labels).
* ``digits_calib.npz``  ``x``: the first 128 images of the *training* split, the calibration set of
                        the demo's quantized variants (calibrating on the test images would flatter
                        their accuracy).

    python scripts/train_demo_model.py            # needs torch, scikit-learn, onnx
"""
import argparse
import json
import math
import os
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "..", "src", "qinfer", "data")

SEED = 8
EPOCHS = 30
LR = 3e-3
BATCH = 32
CALIB_SAMPLES = 128
OPSET = 17
MIN_ACCURACY = 0.95


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]      # [1797, 1, 8, 8] in [0, 1]
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0)


def build_model():
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.MaxPool2d(2))
            self.fc = nn.Linear(32 * 4 * 4, 10)

        def forward(self, x):
            return self.fc(self.body(x).flatten(1))

    return DigitsCNN()


def train(model, x, y):
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS * math.ceil(len(x) / BATCH))
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DATA_DIR, help="output folder (default: src/qinfer/data)")
    args = ap.parse_args(argv)

    import onnx
    import torch
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    x_train, x_test, y_train, y_test = digits_split()
    model = build_model()
    train(model, x_train, y_train)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    if acc <= MIN_ACCURACY:
        sys.exit(f"the demo CNN trained to only {acc:.4f} test accuracy (want > {MIN_ACCURACY})")

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "digits_cnn.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x_test[:1]),), onnx_path, dynamo=False,
                          opset_version=OPSET, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    m = onnx.load(onnx_path)
    onnx.helper.set_model_props(m, {
        "qinfer.demo": "digits_cnn",
        "dataset": "scikit-learn load_digits, 8x8 grey, scaled to [0, 1]; "
                   "train_test_split(test_size=0.25, random_state=0)",
        "classes": "0,1,2,3,4,5,6,7,8,9",
        "float_accuracy": "%.6f" % acc,
        "trained_by": "scripts/train_demo_model.py (torch %s, seed %d, %d epochs)" % (
            torch.__version__, SEED, EPOCHS),
    })
    m.doc_string = "qinfer benchmark demo: CNN on scikit-learn digits"
    m.producer_name = "qinfer scripts/train_demo_model.py"
    onnx.checker.check_model(m)
    onnx.save(m, onnx_path)

    np.savez_compressed(os.path.join(args.out, "digits_test.npz"), input=x_test, labels=y_test)
    np.savez_compressed(os.path.join(args.out, "digits_calib.npz"), input=x_train[:CALIB_SAMPLES])

    sizes = {f: os.path.getsize(os.path.join(args.out, f))
             for f in ("digits_cnn.onnx", "digits_test.npz", "digits_calib.npz")}
    print(json.dumps({"torch_test_accuracy": acc, "test_samples": int(len(y_test)),
                      "bytes": sizes}, indent=1))
    try:   # cross-check with qinfer's float engine when it is installed
        import qinfer
        sess = qinfer.InferenceSession(onnx_path, num_threads=1)
        (logits,) = sess.run(None, {"input": x_test})
        print("qinfer float test accuracy: %.4f" % float((logits.argmax(1) == y_test).mean()))
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
