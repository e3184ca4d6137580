"""ONNX export with int4 ternary codes: parity with PyTorch in onnxruntime, the codes
themselves, evaluation of ONNX files through main.py, and bad input."""
import json
import logging
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import main
from models import get_model, ternary_layers, use_reference_rel_bias
from utils.data import DEBIAN_FASHION_MNIST
from utils.onnx_export import OnnxModel, export_onnx

FAMILIES = [
    ("tern_resnet20", {}, (3, 32, 32)),
    ("tern_resnet20", {"tex": 2}, (3, 32, 32)),
    ("tern_resnet20", {"tex": 4}, (3, 32, 32)),
    ("resnet18b_ff_lf_tex1", {"num_classes": 10}, (3, 64, 64)),
    ("resnet18b_fq_lq_tex1", {"num_classes": 10}, (3, 64, 64)),
    ("tern_alexnet_fq_lq", {"num_classes": 10}, (3, 96, 96)),
]


def trained_like(model):
    """Non-trivial BatchNorm statistics and biases, so the parity check sees real scales."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.2, 0.2)
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


def assert_parity(model, path, shape):
    x = torch.randn(3, *shape)
    with torch.no_grad():
        expected = model(x)
    got = OnnxModel(str(path))(x)
    assert got.shape == expected.shape
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-4


@pytest.mark.parametrize("arch, options, shape", FAMILIES)
def test_every_family_exports_with_int4_codes_and_matches_pytorch(tmp_path, arch, options, shape):
    model = trained_like(get_model(arch, **options))
    path = tmp_path / "model.onnx"
    written = export_onnx(model, str(path), shape)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    initializers = {init.name: init for init in proto.graph.initializer}
    layers = dict(ternary_layers(model))
    assert written["ternary_layers"] == len(layers) and written["bytes"] == os.path.getsize(path)
    for name, layer in layers.items():
        assert f"{name}.weight" not in initializers  # no float32 copy of a ternary weight
        weight = 0
        for k in range(layer.tex):
            codes = initializers[f"{name}.weight.branch{k}.codes"]
            assert codes.data_type == onnx.TensorProto.INT4
            values = numpy_helper.to_array(codes).astype(np.float32)
            assert set(np.unique(values)) <= {-1.0, 0.0, 1.0}
            weight = weight + values * numpy_helper.to_array(initializers[f"{name}.weight.branch{k}.alpha"])
        assert np.array_equal(weight, layer.effective_weight().numpy())  # the dequantized weight, bit for bit
    assert_parity(model, path, shape)
    assert sum(node.op_type == "DequantizeLinear" for node in proto.graph.node) == sum(
        layer.tex for layer in layers.values())


def test_reference_rel_bias_carries_over(tmp_path):
    model = trained_like(get_model("resnet18b_fq_lq_tern_tex_2", num_classes=10))
    assert use_reference_rel_bias(model) == ["fc"]
    export_onnx(model, str(tmp_path / "rel.onnx"), (3, 64, 64))
    assert_parity(model, tmp_path / "rel.onnx", (3, 64, 64))


def test_file_is_much_smaller_than_float32():
    model = get_model("tern_resnet20")
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        written = export_onnx(model, os.path.join(folder, "m.onnx"), (3, 32, 32))
    assert written["fp32_bytes"] / written["bytes"] > 4.5  # measured 5.40× (int4 codes, fp32 BatchNorm)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_digits")
    assert main.main(["--epochs", "3", "--save_path", str(folder / "run")]) == 0
    return folder


def prec1(capsys):
    out = capsys.readouterr().out
    return float(out.split("Prec@1 ")[1].split()[0])


def test_evaluating_the_onnx_file_gives_the_checkpoints_accuracy(digits_run, capsys):
    checkpoint = str(digits_run / "run" / "model_best.pth.tar")
    assert main.main(["--evaluate", "--resume", checkpoint, "--save_path", str(digits_run / "eval_pt")]) == 0
    expected = prec1(capsys)
    onnx_path = str(digits_run / "model.onnx")
    assert main.main(["--resume", checkpoint, "--export", onnx_path, "--save_path", str(digits_run / "x")]) == 0
    capsys.readouterr()
    assert main.main(["--evaluate", "--resume", onnx_path, "--save_path", str(digits_run / "eval_onnx")]) == 0
    assert prec1(capsys) == expected
    result = json.load(open(digits_run / "eval_onnx" / "results.json"))
    assert result["format"] == "onnx" and result["source"] == onnx_path
    assert result["top1"] == pytest.approx(expected, abs=0.005)


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_onnx_accuracy_equals_the_checkpoint(tmp_path, capsys):
    common = ["--dataset", "fashion_mnist"]
    assert main.main(common + ["--subset", "2000", "--epochs", "1", "--save_path", str(tmp_path / "run")]) == 0
    checkpoint = str(tmp_path / "run" / "model_best.pth.tar")
    assert main.main(common + ["--evaluate", "--resume", checkpoint, "--save_path", str(tmp_path / "e1")]) == 0
    expected = prec1(capsys)
    assert main.main(common + ["--resume", checkpoint, "--export", str(tmp_path / "f.onnx"),
                               "--save_path", str(tmp_path / "x")]) == 0
    capsys.readouterr()
    assert main.main(common + ["--evaluate", "--resume", str(tmp_path / "f.onnx"), "--save_path",
                               str(tmp_path / "e2")]) == 0
    assert prec1(capsys) == expected


def test_full_precision_model_exports_as_plain_float32(tmp_path, capsys):
    weights = str(tmp_path / "fp.pth")
    torch.save(get_model("resnet20", in_channels=1).state_dict(), weights)
    assert main.main(["--arch", "resnet20", "--pretrained", weights, "--export", str(tmp_path / "fp.onnx")]) == 0
    assert "no ternary layers: a plain float32 model" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "fp.onnx"))
    assert not any(node.op_type == "DequantizeLinear" for node in proto.graph.node)
    assert main.main(["--arch", "resnet20", "--pretrained", weights, "--export", "/nonexistent/folder/m.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write /nonexistent/folder/m.onnx" in err


@pytest.mark.parametrize("argv, message", [
    (["--export", "/nonexistent/folder/m.onnx"], "--export needs a trained model: --resume CHECKPOINT or --pretrained"),
    (["--export", "model.pt"], "unknown format; name the file .tern"),
    (["--evaluate", "--resume", "missing.onnx"], "ONNX file not found"),
    (["--resume", "model.onnx"], "is an ONNX inference file: use it with --evaluate"),
])
def test_bad_onnx_input_is_one_line(tmp_path, capsys, argv, message):
    assert main.main(argv + ["--save_path", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_onnx_of_another_shape_or_a_broken_file_is_refused(digits_run, tmp_path, capsys):
    onnx_path = digits_run / "model.onnx"
    if not onnx_path.exists():
        export_onnx(get_model("tern_resnet20", in_channels=1), str(onnx_path), (1, 8, 8))
    assert main.main(["--evaluate", "--resume", str(onnx_path), "--dataset", "fashion_mnist", "--save_path",
                      str(tmp_path / "e")]) == 2
    assert "takes (1, 8, 8) images" in capsys.readouterr().err
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    assert main.main(["--evaluate", "--resume", str(tmp_path / "broken.onnx"), "--save_path", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load") and err.count("\n") == 1


def test_int8_quantization_is_quiet_and_keeps_batchnorm_as_its_docs_say(tmp_path, caplog):
    from tools.deploy_benchmark import quantize_int8

    fp32_path, int8_path = str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx")
    export_onnx(get_model("tern_resnet20", in_channels=1).eval(), fp32_path, (1, 8, 8), ternary_codes=False)
    caplog.clear()
    quantize_int8(fp32_path, int8_path, np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32))
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert not warnings  # onnxruntime's quantizer logs ~40 warnings about computed conv biases otherwise
    graph = onnx.load(int8_path).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("BatchNormalization") == 19 and "QuantizeLinear" in ops  # not folded into the convs
    weights = [codes for codes in (numpy_helper.to_array(t) for t in graph.initializer
                                   if t.data_type == onnx.TensorProto.INT8) if codes.ndim >= 2]
    assert len(weights) == 20  # 19 convs and the classifier
    for codes in weights:  # 7-bit (no saturation without VNNI) and exact: three levels per output channel
        assert np.abs(codes).max() <= 64
        assert all(len(np.unique(np.abs(channel))) <= 2 for channel in codes.reshape(len(codes), -1))



@pytest.mark.parametrize("options", [{}, {"tex": 2}, {"quantizer": "ttq"}])
def test_a_packed_file_exports_the_int4_onnx_of_its_checkpoint(tmp_path, options):
    from utils.export import export_packed, load_packed

    torch.manual_seed(0)
    model = get_model("tern_resnet20", in_channels=1, **options).eval()
    for _, layer in ternary_layers(model):
        if layer.quantizer == "ttq":  # trained scales differ from their start at 1
            layer.positive_scale.data.uniform_(0.5, 1.5)
            layer.negative_scale.data.uniform_(0.5, 1.5)
    export_packed(model, str(tmp_path / "m.tern"), input_shape=(1, 8, 8))
    export_onnx(model, str(tmp_path / "from_model.onnx"), (1, 8, 8))
    written = export_onnx(load_packed(str(tmp_path / "m.tern")), str(tmp_path / "from_file.onnx"), (1, 8, 8))
    assert written["ternary_layers"] == 20
    expected, got = (onnx.load(str(tmp_path / name)).graph for name in ("from_model.onnx", "from_file.onnx"))
    assert [i.name for i in got.initializer] == [i.name for i in expected.initializer]
    for mine, theirs in zip(got.initializer, expected.initializer):
        assert mine.data_type == theirs.data_type
        assert np.array_equal(numpy_helper.to_array(mine), numpy_helper.to_array(theirs)), mine.name


def test_main_exports_a_packed_file_to_onnx_only(tmp_path, capsys):
    from utils.export import export_packed

    export_packed(get_model("tern_resnet20", in_channels=1).eval(), str(tmp_path / "m.tern"), input_shape=(1, 8, 8))
    assert main.main(["--resume", str(tmp_path / "m.tern"), "--export", str(tmp_path / "m.onnx")]) == 0
    assert "20 ternary layers as int4 codes" in capsys.readouterr().out
    assert main.main(["--resume", str(tmp_path / "m.tern"), "--export", str(tmp_path / "again.tern")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use it with --evaluate or --export MODEL.onnx" in err
