"""The op table: every op type the IR knows, and groups so passes ask "is this elementwise?".

IR ops use ONNX operator names with the semantics of the newest opset qinfer supports; the importer
rewrites older-opset forms into that canonical form (see importers/onnx.py).
"""

UNARY_ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu",
    "Sqrt", "Exp", "Log", "Neg", "Abs", "Not", "IsNaN", "Cast", "Identity", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Softplus", "Elu", "Selu", "Sin", "Cos", "Mish",
})
BINARY_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "PRelu", "Equal", "Greater", "GreaterOrEqual",
    "Less", "LessOrEqual", "And", "Or", "Xor", "Mod", "Sum", "Mean",
})
ELEMENTWISE = UNARY_ELEMENTWISE | BINARY_ELEMENTWISE | frozenset({"Where"})
#: ops with a weight tensor that quantization and pruning act on
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
QUANTIZABLE = WEIGHTED
REDUCE = frozenset({
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum",
})
POOL = frozenset({"GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool"})
NORMALIZATION = frozenset({"BatchNormalization", "LayerNormalization", "InstanceNormalization"})
#: ops that only move or reinterpret data (commute with per-tensor quantization)
DATA_MOVEMENT = frozenset({
    "Concat", "Split", "Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather",
    "Expand", "Tile", "Pad", "Identity", "DepthToSpace", "SpaceToDepth", "Resize",
})
#: ops whose output depends only on input shapes (never on values)
SHAPE_ONLY = frozenset({"Shape", "Size"})
GENERATORS = frozenset({"Constant", "ConstantOfShape", "Range", "EyeLike"})
OTHER = frozenset({
    "Softmax", "LogSoftmax", "ArgMax", "ArgMin", "LSTM", "TopK", "CumSum", "Einsum", "NonZero",
    "DequantizeLinear",
})

ALL_OPS = (ELEMENTWISE | WEIGHTED | REDUCE | POOL | NORMALIZATION | DATA_MOVEMENT | SHAPE_ONLY
           | GENERATORS | OTHER)

#: ops whose result depends on the values of the inputs at run time only through randomness
#: (none in scope) -- anything else with constant inputs may be folded.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"})


def is_elementwise(op):
    return op in ELEMENTWISE


def is_weighted(op):
    return op in WEIGHTED
