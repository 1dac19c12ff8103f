"""Shared test fixtures: the seed, the ``slow`` marker and the real-model fixtures.

Seeds: tests that draw random data take the ``rng`` fixture, a
``numpy.random.Generator`` seeded from ``--seed`` (or the environment variable
``QINFER_TEST_SEED``; default 0). Seeded tests must pass for any seed; the
seed in use is printed in the report header so a failure can be replayed.

Models: the builders live in ``tests/models.py`` and cache their files in
qinfer's cache directory (``QINFER_CACHE_DIR``). A model that cannot be
obtained here (PP-OCR without network) skips the tests that need it.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import models  # noqa: E402  (tests/models.py, importable whatever the pytest import mode)

SEED_ENV = "QINFER_TEST_SEED"


def pytest_addoption(parser):
    parser.addoption("--seed", action="store", type=int, default=None,
                     help="seed of the rng fixture (default: $%s or 0)" % SEED_ENV)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes seconds or more (PP-OCR models, big inputs); deselect with -m 'not slow'")


def _seed(config):
    opt = config.getoption("--seed")
    if opt is not None:
        return opt
    env = os.environ.get(SEED_ENV, "")
    return int(env) if env else 0


def pytest_report_header(config):
    return "qinfer test seed: %d (replay with --seed %d or %s=%d)" % (
        _seed(config), _seed(config), SEED_ENV, _seed(config))


@pytest.fixture
def seed(request):
    return _seed(request.config)


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------
# real models (paths to cached .onnx files)

def _get(builder):
    try:
        return builder()
    except models.ModelUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def model_path():
    """``model_path(name)`` -> cached .onnx path for a name of ``models.BUILDERS``."""
    return lambda name: _get(models.BUILDERS[name])


@pytest.fixture(scope="session")
def ppocr_det_onnx():
    return _get(models.ppocr_det)


@pytest.fixture(scope="session")
def ppocr_rec_onnx():
    return _get(models.ppocr_rec)


@pytest.fixture(scope="session")
def ppocr_cls_onnx():
    return _get(models.ppocr_cls)


@pytest.fixture(scope="session")
def resnet18_onnx():
    return _get(models.resnet18)


@pytest.fixture(scope="session")
def mobilenetv2_onnx():
    return _get(models.mobilenetv2)


@pytest.fixture(scope="session")
def transformer_onnx():
    return _get(models.transformer)


@pytest.fixture(scope="session")
def digits_cnn():
    """``models.DigitsModel``: path, x_test [N,1,8,8], y_test, float_accuracy, train_seconds."""
    return _get(models.digits_cnn)


@pytest.fixture(scope="session")
def digits_mlp():
    """``models.DigitsModel``: path, x_test [N,784], y_test, float_accuracy, train_seconds."""
    return _get(models.digits_mlp)
