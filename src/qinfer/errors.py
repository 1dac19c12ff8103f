"""Exception classes of qinfer (SPEC section 5). Every error qinfer raises on bad input is one of these."""


class QinferError(Exception):
    """Base class of every error qinfer raises on purpose."""


class UnsupportedOperatorError(QinferError):
    """An ONNX model uses an operator, attribute or type qinfer cannot run.

    ``problems`` lists ``(node_name, op_type, opset, reason)`` tuples: the importer reports every
    unsupported node of a model in one error, not only the first.
    """

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems)


class ModelFormatError(QinferError):
    """A ``.qinf`` or ONNX file is unreadable, truncated, corrupted, or of an unknown version."""


class InvalidInputError(QinferError):
    """A feed has a wrong name, dtype, rank or dimension."""


class CalibrationError(QinferError):
    """Calibration data is missing, empty, or does not match the model inputs."""
