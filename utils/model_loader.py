"""Where every model comes from: built fresh (optionally from pretrained weights), or
loaded from a file of any kind this project reads — a training checkpoint (ours or the
authors'), a packed .tern file or an ONNX file. main.py and every tool use these two, and
export_model, which writes a model as either inference file by the suffix.

    model = build_model(ModelChoice("tern_resnet20"), info, pretrained="resnet18.pth")
    loaded = load_model("save/run/model_best.pth.tar", info)      # the network the file records
    loaded.model, loaded.file_format, loaded.checkpoint
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

import models

from .checkpoint import check_recorded_args, extract_state_dict, load_checkpoint, load_weights, restore_model
from .data import DatasetInfo, check_preprocessing_record
from .errors import UserError
from .export import export_packed, is_packed_file, load_packed, read_packed_header
from .onnx_export import OnnxModel, export_onnx, is_onnx_file


@dataclass(frozen=True)
class ModelChoice:
    """The network as the command line names it: arch plus the ternarization overrides."""
    arch: str
    tex: int | None = None
    tfactors: tuple[float, ...] | None = None
    first_last: str | None = None  # a name of models.FIRST_LAST: which of the first conv and last linear stay fp
    auto_thresholds: bool = False  # --tfactors auto: optimise every layer's thresholds on its weights
    quantizer: str = "paper"  # the ternarizer: the paper's, TWN or TTQ

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, path: str) -> ModelChoice:
        """The network a checkpoint of this project records (its arch and model flags)."""
        check_recorded_args(checkpoint, path)
        saved = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
        arch = checkpoint.get("arch") or saved.get("arch")
        if not isinstance(arch, str):
            raise UserError(f"{path} does not record its architecture; name it with --arch")
        tfactors = saved.get("tfactors")
        return cls(arch, saved.get("tex"), tuple(tfactors) if tfactors else None, saved.get("first_last"),
                   bool(saved.get("auto_thresholds")), saved.get("quantizer") or "paper")


@dataclass
class LoadedModel:
    model: nn.Module
    file_format: str  # "checkpoint", "packed" or "onnx"
    checkpoint: dict | None = None  # the file's contents, for a checkpoint


def file_format(path: str) -> str:
    """What a model file is, by its suffix and contents: "onnx", "packed" or "checkpoint"."""
    if is_onnx_file(path):
        return "onnx"
    if os.path.isfile(path) and is_packed_file(path):
        return "packed"
    return "checkpoint"


def torchvision_state_dict(arch: str) -> dict:
    """torchvision's pretrained ImageNet weights of `arch`'s full-precision twin (downloaded
    into torch's hub cache, or read from it)."""
    name = models.ARCHS[arch].torchvision_weights if arch in models.ARCHS else None
    if name is None:
        raise UserError(f"torchvision has no pretrained weights for {arch}; give --pretrained a state_dict file")
    import torchvision  # here, not at the top: importing it costs a CLI start about 2 s

    try:
        return torchvision.models.get_weight(name).get_state_dict(progress=False)
    except Exception as exc:  # network errors come in many types
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"could not download {name} ({type(exc).__name__}: {first_line}); "
                        "download the file elsewhere and pass it as --pretrained PATH") from exc


def build_model(choice: ModelChoice, info: DatasetInfo, pretrained: str | None = None) -> nn.Module:
    """A new network for the data set, with `pretrained` weights (a state_dict file, or
    "torchvision" for torchvision's ImageNet weights); with auto thresholds, each layer's
    threshold factors are optimised on its (initial or pretrained) weights."""
    try:
        model = models.get_model(choice.arch, num_classes=info.num_classes, in_channels=info.in_channels,
                                 tex=choice.tex, tfactors=choice.tfactors, first_last=choice.first_last,
                                 quantizer=choice.quantizer)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if pretrained == "torchvision":
        load_weights(model, torchvision_state_dict(choice.arch), source=models.ARCHS[choice.arch].torchvision_weights)
    elif pretrained:
        load_weights(model, extract_state_dict(load_checkpoint(pretrained)), source=pretrained)
    if choice.auto_thresholds:
        if not any(True for _ in models.ternary_layers(model)):
            raise UserError(f"--tfactors auto needs a ternarized arch; {choice.arch} has no ternary layers")
        models.optimize_model_thresholds(model)
    return model


def _check_fits(path: str, classes: object, shape: tuple, info: DatasetInfo, dataset: str) -> None:
    expected = (info.in_channels, info.image_size, info.image_size)
    shape_ok = all(got == want for got, want in zip(shape, expected) if isinstance(got, int))
    classes_ok = not isinstance(classes, int) or classes == info.num_classes
    if not (shape_ok and classes_ok):
        raise UserError(f"{path} takes {shape} images and gives {classes} classes; {dataset} has {expected} "
                        f"and {info.num_classes}")


def recorded_preprocessing(path: str, kind: str) -> dict | None:
    """The preprocessing record of a .tern or ONNX file (its data set, input, normalisation,
    classes), read without building the model; None when the file predates the record."""
    if kind == "packed":
        return read_packed_header(path).get("preprocessing")
    return OnnxModel(path).preprocessing


def load_model(path: str, info: DatasetInfo, dataset: str = "the data set", choice: ModelChoice | None = None,
               checkpoint: dict | None = None, log: Callable[[str], None] = print) -> LoadedModel:
    """The model in `path`, checked against the data set. A checkpoint is rebuilt as
    `choice` (default: the network the checkpoint records) and its weights, threshold
    factors and REL bias rule restored; `checkpoint` is its contents when already read."""
    kind = file_format(path)
    if kind == "onnx":
        if not os.path.isfile(path):
            raise UserError(f"ONNX file not found: {path}")
        model = OnnxModel(path)
        _check_fits(path, model.num_classes, model.input_shape, info, dataset)
        return LoadedModel(model, kind)
    if kind == "packed":
        model = load_packed(path)
        _check_fits(path, model.build_config["num_classes"], model.input_shape, info, dataset)
        return LoadedModel(model, kind)
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    choice = choice or ModelChoice.from_checkpoint(checkpoint, path)
    model = build_model(dataclasses.replace(choice, auto_thresholds=False), info)
    reference_bias = restore_model(model, checkpoint, path)
    model.preprocessing = check_preprocessing_record(checkpoint.get("preprocessing"), path)
    if choice.auto_thresholds and not checkpoint.get("tfactors"):  # e.g. fine-tuning full-precision weights
        models.optimize_model_thresholds(model)
    if reference_bias:
        log(f"=> {path} is a reference checkpoint: REL layers {', '.join(reference_bias)} add their bias "
            "once per branch, as the reference does")
    return LoadedModel(model, kind, checkpoint)


def export_model(model: nn.Module, path: str, input_shape: tuple[int, int, int], encoding: str = "dense",
                 preprocessing: dict | None = None) -> str:
    """Write `model` as a packed file (PATH.tern) or ONNX (PATH.onnx), by the suffix, with
    its `preprocessing` record; returns the line that tells what was written."""
    if is_onnx_file(path):
        written = export_onnx(model, path, input_shape, preprocessing=preprocessing)
        kind = (f"{written['ternary_layers']} ternary layers as int4 codes" if written["ternary_layers"]
                else "no ternary layers: a plain float32 model")
        return (f"=> wrote {path} ({written['bytes']:,} bytes, {kind}; the float32 ONNX of the same graph: "
                f"{written['fp32_bytes']:,} bytes, {written['fp32_bytes'] / written['bytes']:.2f}× larger)")
    size = export_packed(model, path, encoding, input_shape, preprocessing)
    return f"=> wrote {path} ({size:,} bytes, {encoding} encoding)"
