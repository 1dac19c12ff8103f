"""Quantization: observe (``observers``, ``calibrate``) / compute (``qparams``) / pack.

See DESIGN.md "Quantization scheme" and the docstring of ``qparams`` for the scheme and THE rounding
rules the kernels are bit-exact to. Importing this package needs numpy only (tqdm is imported when
a progress bar is shown).
"""
from .qparams import (SCALE_MIN, DEGENERATE_SCALE, uint_range, int_range,  # noqa: F401
                      choose_qparams_asymmetric, choose_qparams_symmetric, quantize_activation,
                      dequantize_activation, quantize_weight_per_channel, quantize_weight_grouped,
                      dequantize, requant_multiplier, requantize, quantize_bias)
from .observers import (Histogram, Observer, MinMaxObserver, PercentileObserver,  # noqa: F401
                        EntropyObserver, MSEObserver, OBSERVERS, make_observer)
from .calibrate import iter_calibration, count_calibration, prepare_feed, calibrate  # noqa: F401

__all__ = ["SCALE_MIN", "DEGENERATE_SCALE", "uint_range", "int_range", "choose_qparams_asymmetric",
           "choose_qparams_symmetric", "quantize_activation", "dequantize_activation",
           "quantize_weight_per_channel", "quantize_weight_grouped", "dequantize",
           "requant_multiplier", "requantize", "quantize_bias", "Histogram", "Observer",
           "MinMaxObserver", "PercentileObserver", "EntropyObserver", "MSEObserver", "OBSERVERS",
           "make_observer", "iter_calibration", "count_calibration", "prepare_feed", "calibrate"]
