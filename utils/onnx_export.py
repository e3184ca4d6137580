"""ONNX export of ternarized networks, and evaluation of ONNX files with onnxruntime.

The graph is torch.onnx's export (dynamo, opset 21, dynamic batch axis, BatchNorm kept)
of the model's inference twin (every ternary layer a plain Conv/Gemm holding Σ_k T_k(W)).
Each ternary weight initializer is then replaced by its codes: for each REL branch k an
int4 tensor of codes c_k = sign(W)·[|W| ≥ Δ_k] in {-1, 0, +1} with scale α_k, dequantized
by a standard DequantizeLinear node, and the t_ex dequantized branches summed by Add
nodes into the weight the Conv/Gemm reads — the QDQ weight form that runtimes and graph
tools understand. A TTQ layer has two such terms, its positive codes (0, 1) with scale W_p
and its negative codes (−1, 0) with scale W_n. Since α_k·c is exact in float32 and the branches are added in the
order PyTorch adds them, the dequantized weight equals the PyTorch effective weight bit
for bit. int4 is the smallest integer type onnxruntime executes for DequantizeLinear
(int2, tried once with onnxruntime 1.32, gave wrong values). Full-precision layers,
BatchNorm and biases stay float32; a REL layer of an authors' checkpoint stores the
t_ex·b it applies.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings

import numpy as np
import torch
import torch.nn as nn

from models.ternary import inference_twin, ternary_layers

from .data import check_preprocessing_record
from .errors import UserError
from .export import packed_terms
from .files import write_bytes

PREPROCESSING_KEY = "ternary_cnn.preprocessing"  # metadata_props key: data set, input shape, mean/std, classes

OPSET = 21  # the first opset whose DequantizeLinear takes int4


def is_onnx_file(path: str) -> bool:
    return path.lower().endswith(".onnx")


def _ternary_codes(model: nn.Module) -> dict[str, list[tuple[np.ndarray, float]]]:
    """(int8 codes in {-1, 0, 1}, scale) of every term of every ternary weight, by initializer
    name: α_k per REL branch; for TTQ the positive codes with W_p and the negative codes with
    W_n. A model loaded from a packed file has plain layers: its terms come from the file."""
    terms = {f"{name}.weight" if name else "weight": layer.ternary_terms() for name, layer in ternary_layers(model)}
    terms = terms or packed_terms(model)
    return {name: [(code.cpu().numpy(), float(scale)) for code, scale in layer_terms]
            for name, layer_terms in terms.items()}


def _torch_export(model: nn.Module, path: str, input_shape: tuple[int, int, int]) -> None:
    example = torch.zeros(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), path, dynamo=True, optimize=False, opset_version=OPSET,
                          input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)


def _quantize_weights(graph, codes: dict[str, list[tuple[np.ndarray, float]]]) -> None:
    """Replace each ternary weight initializer by its DequantizeLinear branches (see the module docstring)."""
    import ml_dtypes
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    nodes = []
    for weight_name, branches in codes.items():
        if weight_name not in initializers:
            raise RuntimeError(f"the exported graph has no initializer {weight_name}")
        graph.initializer.remove(initializers[weight_name])
        outputs = []
        for k, (code, alpha) in enumerate(branches):
            stem = f"{weight_name}.branch{k}"
            graph.initializer.extend([  # int4 codes, two per byte
                numpy_helper.from_array(code.astype(ml_dtypes.int4), f"{stem}.codes"),
                numpy_helper.from_array(np.array(alpha, dtype=np.float32), f"{stem}.alpha"),
                numpy_helper.from_array(np.zeros((), dtype=ml_dtypes.int4), f"{stem}.zero"),
            ])
            outputs.append(weight_name if len(branches) == 1 else f"{stem}.value")
            nodes.append(helper.make_node("DequantizeLinear", [f"{stem}.codes", f"{stem}.alpha", f"{stem}.zero"],
                                          [outputs[-1]], name=f"{stem}.dequantize"))
        total = outputs[0]
        for k, branch in enumerate(outputs[1:], 1):
            total_name = weight_name if k == len(outputs) - 1 else f"{weight_name}.sum{k}"
            nodes.append(helper.make_node("Add", [total, branch], [total_name], name=f"{weight_name}.add{k}"))
            total = total_name
    for inp in [i for i in graph.input if i.name in codes]:
        graph.input.remove(inp)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)


def export_onnx(model: nn.Module, path: str, input_shape: tuple[int, int, int], ternary_codes: bool = True,
                preprocessing: dict | None = None) -> dict:
    """Write `model` (eval semantics) as ONNX with low-bit ternary weights (ternary_codes=False:
    every weight as float32, e.g. as the input of onnxruntime's int8 quantizer) and its
    `preprocessing` record as the model's metadata_props (PREPROCESSING_KEY, JSON); returns
    {"bytes": file size, "ternary_layers", "fp32_bytes": the size of the same graph with
    float32 weights}."""
    import onnx

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"cannot write {path}: the folder does not exist")
    codes = _ternary_codes(model) if ternary_codes else {}
    twin = inference_twin(model).cpu().float()
    with tempfile.TemporaryDirectory() as staging:  # torch.onnx writes the weights beside the graph
        _torch_export(twin, os.path.join(staging, "model.onnx"), input_shape)
        proto = onnx.load(os.path.join(staging, "model.onnx"))
    for node in proto.graph.node:  # the exporter's per-node stack traces: most of a small model's bytes
        del node.metadata_props[:]
        node.doc_string = ""
    fp32_bytes = proto.ByteSize()
    _quantize_weights(proto.graph, codes)
    proto.producer_name = "ternarized-cnn"
    if preprocessing is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = PREPROCESSING_KEY, json.dumps(preprocessing)
    onnx.checker.check_model(proto)
    write_bytes(path, proto.SerializeToString())
    return {"bytes": os.path.getsize(path), "ternary_layers": len(codes), "fp32_bytes": fp32_bytes}


def _quantizes_activations(path: str) -> bool:
    """Whether the ONNX file quantizes activations (has QuantizeLinear nodes), e.g. an int8 model."""
    import onnx

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception:  # unreadable: onnxruntime reports it below
        return False
    return any(node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for node in graph.node)


def _read_preprocessing(session, path: str) -> dict | None:
    """The preprocessing record an exported file carries in its metadata_props (None: none)."""
    text = session.get_modelmeta().custom_metadata_map.get(PREPROCESSING_KEY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        raise UserError(f"{path} has an unreadable preprocessing record in its metadata") from None
    return check_preprocessing_record(record, path)


class OnnxModel(nn.Module):
    """An ONNX file run by onnxruntime (CPU), called like the PyTorch model: float32
    images (N, C, H, W) in, logits out, as torch tensors."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = path
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not _quantizes_activations(path):
            # Only weights are dequantized: let onnxruntime fold them into float32 constants once
            # instead of keeping the DequantizeLinear nodes for int8 kernel fusion and running them per call.
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"cannot load {path} with onnxruntime ({str(exc).splitlines()[0][:200]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise UserError(f"{path} is not an image classifier (one (N, C, H, W) input, one output)")
        self.input_name = inputs[0].name
        self.preprocessing = _read_preprocessing(self.session, path)
        self.input_shape = tuple(inputs[0].shape[1:])  # (C, H, W); entries may be symbolic
        self.num_classes = outputs[0].shape[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().contiguous().cpu().numpy()
        try:
            outputs = self.session.run(None, {self.input_name: array})
        except Exception as exc:  # onnxruntime raises its own exception types for a graph that cannot run
            raise UserError(f"onnxruntime cannot run {self.path} on a batch of shape {tuple(array.shape)} "
                            f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
        return torch.from_numpy(outputs[0])
