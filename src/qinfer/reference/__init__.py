"""numpy oracle per op family, and a graph executor over it (calibration, folding, tests)."""
from .registry import get, supported_ops  # noqa: F401
