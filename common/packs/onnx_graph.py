"""Rewrites of a model's graph that give the same outputs for less CPU on onnxruntime's CPU kernels.

PReLU with a slope per channel (the activation of insightface's ArcFace recognizers, MobileFaceNet and IResNet)
is 41 % of w600k_mbf's time on one CPU thread, not for its arithmetic: onnxruntime runs it as a generic broadcast
outside the blocked (NCHWc) layout its convolutions use, so each one also converts the tensor out of that layout
and back.
Written as convolutions and a ReLU, which stay in that layout, the same network takes a third less time
(BENCHMARKS.md, profile):

    prelu(x) = s * x + (1 - s) * relu(x)      (per channel c: x for x > 0, s_c * x otherwise)

with both products a 1x1 depthwise convolution (weights s and 1 - s) and the sum fused into the second one by
onnxruntime. For x < 0 this is s * x exactly; for x > 0 it is x within a float32 rounding (2e-6 on an embedding,
cosine 1 - 1e-7 to the original graph's).

Where x is a convolution's own output (its weights and bias constants of the model that nothing else reads, x read by
nothing but the PReLU) and every slope is below 1, one product goes into that convolution instead: with 1 - s > 0,
(1 - s) * relu(x) = relu((1 - s) * x), so the convolution computes u = (1 - s) * x with its weights and bias scaled per
output channel, and

    prelu(x) = relu(u) + s / (1 - s) * u

is a ReLU and one 1x1 depthwise convolution with the sum fused into it: one pass over the tensor less for each PReLU
(the recognizers' convolutions are followed by a batch norm that onnxruntime folds into them, or are already folded,
as in insightface's files). Model code does no I/O: these take and return ModelProto."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _ranks(model: onnx.ModelProto) -> dict[str, tuple[int, int | None]]:
    """Each tensor's (element type, channel count or None) where shape inference knows it is a 4-D tensor."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known: dict[str, tuple[int, int | None]] = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if not tensor.HasField("shape") or len(tensor.shape.dim) != 4:
            continue
        channel = tensor.shape.dim[1]
        known[info.name] = (tensor.elem_type, channel.dim_value if channel.HasField("dim_value") else None)
    return known


def _per_channel_slope(slope: np.ndarray) -> np.ndarray | None:
    """The slope as one value per channel of an NCHW tensor, or None when it broadcasts any other way."""
    shape = slope.shape
    if len(shape) == 3 and shape[1:] == (1, 1):
        return slope.reshape(-1)
    if len(shape) == 4 and shape[0] == 1 and shape[2:] == (1, 1):
        return slope.reshape(-1)
    return None


def _is_constant_prelu(node: onnx.NodeProto, initializers: set[str]) -> bool:
    """A PReLU of the standard domain whose slope is a constant of the model (one it can read and rewrite)."""
    return node.op_type == "PRelu" and node.domain in ("", "ai.onnx") and node.input[1] in initializers


def _depthwise(source: str, weights: str, output: str, channels: int) -> onnx.NodeProto:
    """``output = weights[c] * source`` per channel: a 1x1 convolution with one group per channel."""
    return helper.make_node("Conv", [source, weights], [output], group=channels, kernel_shape=[1, 1])


def _foldable_convolution(
    x: str,
    producers: dict[str, onnx.NodeProto],
    readers: Counter[str],
    fixed: set[str],
    initializers: dict[str, onnx.TensorProto],
) -> onnx.NodeProto | None:
    """The convolution whose output ``x`` is, when its scale per output channel may change: a standard Conv whose
    float weights and bias are constants read by it alone, and ``x`` read by nothing else. ``fixed``: the graph's
    inputs and outputs (an initializer that is also an input, IR version < 4, may be fed at run time)."""
    conv = producers.get(x)
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or readers[x] != 1 or x in fixed:
        return None
    constants = conv.input[1:]
    if any(name not in initializers or name in fixed or readers[name] != 1 for name in constants):
        return None
    return conv if initializers[constants[0]].data_type == TensorProto.FLOAT else None


def _scale_output_channels(conv: onnx.NodeProto, scale: np.ndarray, initializers: dict[str, onnx.TensorProto]) -> None:
    """The convolution's weights [C_out, ...] and bias [C_out] times ``scale`` per output channel, in place."""
    for position, name in enumerate(conv.input[1:]):
        values = numpy_helper.to_array(initializers[name]).astype(np.float32)
        shape = (-1,) + (1,) * (values.ndim - 1) if position == 0 else (-1,)
        initializers[name].CopyFrom(numpy_helper.from_array(values * scale.reshape(shape), name))


def prelu_as_convolutions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every per-channel PReLU of a float32 NCHW tensor written as convolutions (see the
    module's docstring), and how many were rewritten (``model`` itself when none is). Any other PReLU (a slope
    that is a graph input, a 2-D tensor, a shape not known) is kept as it is."""
    constants = {tensor.name for tensor in model.graph.initializer}
    if not any(_is_constant_prelu(node, constants) for node in model.graph.node):
        return model, 0  # a detector, a ReLU6 recognizer: no copy and no shape inference at start-up
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    tensors = _ranks(rewritten)
    producers = {output: node for node in graph.node for output in node.output}
    readers = Counter(name for node in graph.node for name in node.input)
    fixed = {value.name for value in (*graph.input, *graph.output)}
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        if not _is_constant_prelu(node, constants):
            nodes.append(node)
            continue
        x, slope_name = node.input
        y = node.output[0]
        slope = _per_channel_slope(numpy_helper.to_array(initializers[slope_name]).astype(np.float32))
        elem_type, channels = tensors.get(x, (TensorProto.UNDEFINED, None))
        if slope is None or elem_type != TensorProto.FLOAT or channels != slope.size:
            nodes.append(node)
            continue
        count += 1
        prefix = f"{y}/prelu"
        foldable = bool((slope < 1).all())
        conv = _foldable_convolution(x, producers, readers, fixed, initializers) if foldable else None
        if conv is not None:
            kept = 1.0 - slope  # > 0: relu((1 - s) x) = (1 - s) relu(x)
            _scale_output_channels(conv, kept, initializers)
            graph.initializer.append(numpy_helper.from_array((slope / kept).reshape(-1, 1, 1, 1), f"{prefix}/ratio"))
            nodes += [
                helper.make_node("Relu", [x], [f"{prefix}/positive"]),
                _depthwise(x, f"{prefix}/ratio", f"{prefix}/scaled", slope.size),
                helper.make_node("Add", [f"{prefix}/scaled", f"{prefix}/positive"], [y]),
            ]
            continue
        graph.initializer.extend(
            [
                numpy_helper.from_array(slope.reshape(-1, 1, 1, 1), f"{prefix}/slope"),
                numpy_helper.from_array((1.0 - slope).reshape(-1, 1, 1, 1), f"{prefix}/one_minus_slope"),
            ]
        )
        nodes += [
            _depthwise(x, f"{prefix}/slope", f"{prefix}/scaled", slope.size),
            helper.make_node("Relu", [x], [f"{prefix}/positive"]),
            _depthwise(f"{prefix}/positive", f"{prefix}/one_minus_slope", f"{prefix}/kept", slope.size),
            helper.make_node("Add", [f"{prefix}/kept", f"{prefix}/scaled"], [y]),
        ]
    if not count:
        return model, 0
    del graph.node[:]
    graph.node.extend(nodes)
    # The old slopes: onnxruntime would warn about each unused one (and a model of IR version < 4 lists its
    # initializers as graph inputs too).
    used = {name for node in graph.node for name in node.input}
    for tensor in [tensor for tensor in graph.initializer if tensor.name not in used]:
        graph.initializer.remove(tensor)
    for value in [value for value in graph.input if value.name in initializers and value.name not in used]:
        graph.input.remove(value)
    return rewritten, count
