"""The CPU rewrite of PReLU (common/packs/onnx_graph.py): the same outputs as the original graph, and only where it
is the same function. Built from small graphs made here: no model pack needed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from common.packs.onnx_graph import prelu_as_convolutions

CHANNELS = 8


def _conv_prelu_model(slope: np.ndarray, *, flatten_first: bool = False, ir_inputs: bool = False) -> onnx.ModelProto:
    """input [N, 3, 16, 16] -> 3x3 conv to CHANNELS -> PReLU(slope) (-> optionally Flatten first) -> output."""
    rng = np.random.default_rng(7)
    weights = numpy_helper.from_array(rng.standard_normal((CHANNELS, 3, 3, 3)).astype(np.float32), "w")
    slope_tensor = numpy_helper.from_array(slope.astype(np.float32), "slope")
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    activation_input = "conv"
    if flatten_first:
        nodes.append(helper.make_node("Flatten", ["conv"], ["flat"]))
        activation_input = "flat"
    nodes.append(helper.make_node("PRelu", [activation_input, "slope"], ["output"]))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])]
    if ir_inputs:  # models of IR version < 4 list every initializer as a graph input too
        inputs += [
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [CHANNELS, 3, 3, 3]),
            helper.make_tensor_value_info("slope", TensorProto.FLOAT, list(slope.shape)),
        ]
    graph = helper.make_graph(
        nodes,
        "conv_prelu",
        inputs,
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, ["N", CHANNELS * 256] if flatten_first else ["N", CHANNELS, 16, 16]
            )
        ],
        initializer=[weights, slope_tensor],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    output = session.run(None, {"input": batch})[0]
    assert isinstance(output, np.ndarray)
    return output


# Negative slopes, slopes above 1 and 0 and 1 themselves: the rewrite must be PReLU for every slope, not only the
# usual (0, 1).
SLOPES = np.array([-0.8, -0.1, 0.0, 0.25, 0.5, 0.94, 1.0, 1.7], dtype=np.float32)


@pytest.mark.parametrize("shape", [(CHANNELS, 1, 1), (1, CHANNELS, 1, 1)])
def test_a_per_channel_prelu_becomes_convolutions_with_the_same_outputs(shape: tuple[int, ...]) -> None:
    model = _conv_prelu_model(SLOPES.reshape(shape))
    rewritten, count = prelu_as_convolutions(model)
    assert count == 1
    assert [node.op_type for node in rewritten.graph.node] == ["Conv", "Conv", "Relu", "Conv", "Add"]
    assert "slope" not in {tensor.name for tensor in rewritten.graph.initializer}
    onnx.checker.check_model(rewritten, full_check=True)
    batch = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32) * 4
    expected, got = _run(model, batch), _run(rewritten, batch)
    assert got.shape == expected.shape
    negative = expected < 0
    assert negative.any() and (~negative).any()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    # Where the conv output is negative the rewrite is s * x + 0: the very same float.
    conv_negative = _run(_conv_prelu_model(np.ones(shape, np.float32)), batch) < 0
    np.testing.assert_array_equal(got[conv_negative], expected[conv_negative])


def test_the_original_model_is_left_as_it_was() -> None:
    model = _conv_prelu_model(SLOPES.reshape(CHANNELS, 1, 1))
    before = model.SerializeToString()
    prelu_as_convolutions(model)
    assert model.SerializeToString() == before


def test_initializers_listed_as_graph_inputs_go_with_their_slope() -> None:
    model = _conv_prelu_model(SLOPES.reshape(CHANNELS, 1, 1), ir_inputs=True)
    rewritten, count = prelu_as_convolutions(model)
    assert count == 1
    assert [value.name for value in rewritten.graph.input] == ["input", "w"]
    batch = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, batch), _run(model, batch), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("slope", "flatten_first"),
    [
        (SLOPES, False),  # shape (C,) broadcasts along the width, not the channels
        (np.array([0.25], dtype=np.float32), False),  # one slope for all: not per channel
        (np.full((CHANNELS * 16 * 16,), 0.25, dtype=np.float32), True),  # a 2-D tensor (after Flatten)
    ],
)
def test_a_prelu_that_is_not_per_channel_of_nchw_is_kept(slope: np.ndarray, flatten_first: bool) -> None:
    if not flatten_first and slope.size == CHANNELS:
        slope = np.resize(slope, 16)  # (16,): valid against [N, C, 16, 16], along the width
    model = _conv_prelu_model(slope, flatten_first=flatten_first)
    rewritten, count = prelu_as_convolutions(model)
    assert count == 0
    assert rewritten is model


# Slopes of a trained recognizer: all below 1 (w600k_mbf's run from -0.83 to 0.94), negative ones included.
BELOW_ONE = np.array([-0.83, -0.1, 0.0, 0.25, 0.5, 0.9, 0.94, 0.999], dtype=np.float32)


def _folding_model(*, bias: bool = True, also_read: bool = False, shared_weights: bool = False) -> onnx.ModelProto:
    """input -> conv (w, optionally b) -> PReLU(BELOW_ONE) -> output; ``also_read``: the conv's output is a second
    output of the graph too; ``shared_weights``: a second conv reads the same weights (its output a second output)."""
    rng = np.random.default_rng(11)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((CHANNELS, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(BELOW_ONE.reshape(CHANNELS, 1, 1), "slope"),
    ]
    conv_inputs = ["input", "w"]
    if bias:
        initializers.append(numpy_helper.from_array(rng.standard_normal(CHANNELS).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes = [
        helper.make_node("Conv", conv_inputs, ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["conv", "slope"], ["output"]),
    ]
    shape = ["N", CHANNELS, 16, 16]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)]
    if also_read:
        outputs.append(helper.make_tensor_value_info("conv", TensorProto.FLOAT, shape))
    if shared_weights:
        nodes.append(helper.make_node("Conv", ["input", "w"], ["second"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes,
        "conv_prelu_fold",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        outputs,
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _outputs(model: onnx.ModelProto, batch: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(output) for output in session.run(None, {"input": batch})]


@pytest.mark.parametrize("bias", [True, False])
def test_a_convolution_s_prelu_folds_one_product_into_the_convolution(bias: bool) -> None:
    model = _folding_model(bias=bias)
    before = model.SerializeToString()
    rewritten, count = prelu_as_convolutions(model)
    assert count == 1
    assert model.SerializeToString() == before  # the caller's model keeps its weights
    # The conv computes (1 - s) x; then relu of it plus s / (1 - s) times it: one depthwise conv, not two.
    assert [node.op_type for node in rewritten.graph.node] == ["Conv", "Relu", "Conv", "Add"]
    onnx.checker.check_model(rewritten, full_check=True)
    batch = np.random.default_rng(5).standard_normal((4, 3, 16, 16)).astype(np.float32) * 4
    (expected,), (got,) = _outputs(model, batch), _outputs(rewritten, batch)
    assert (expected < 0).any() and (expected > 0).any()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("also_read", "shared_weights"), [(True, False), (False, True)])
def test_a_convolution_whose_output_or_weights_are_read_elsewhere_keeps_its_scale(
    also_read: bool, shared_weights: bool
) -> None:
    model = _folding_model(also_read=also_read, shared_weights=shared_weights)
    rewritten, count = prelu_as_convolutions(model)
    assert count == 1
    assert [node.op_type for node in rewritten.graph.node][:5] == ["Conv", "Conv", "Relu", "Conv", "Add"]
    batch = np.random.default_rng(6).standard_normal((2, 3, 16, 16)).astype(np.float32) * 4
    expected, got = _outputs(model, batch), _outputs(rewritten, batch)
    np.testing.assert_array_equal(got[1], expected[1])  # the other reader sees the conv's own values
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-5)
