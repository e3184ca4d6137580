"""Brevitas as the outside peer (--quantizer brevitas, issue 37): its layers are Brevitas's
own QuantConv2d / QuantLinear with its ternary weight quantizer, so these tests run where
the optional extra (requirements-peers.txt) is installed; the last two run everywhere:
what a user without it sees, and the rule the exports store."""
import json
import os
import subprocess
import sys

import pytest
import torch

import models
from helpers import QUICK, ROOT, run_main, train_resume_export_evaluate
from models.quantizers import get_quantizer
from models.quantizers.brevitas import TERNARY_SCALE, brevitas_codes
from models.ternary import layer_stats, ternary_layers

try:
    import brevitas.nn as qnn
    from brevitas.quant import SignedTernaryWeightPerTensorConst
except ImportError:
    qnn = None
needs_brevitas = pytest.mark.skipif(qnn is None, reason="Brevitas is an optional extra: "
                                                          "pip install -r requirements-peers.txt")


def test_brevitas_rule_by_hand():
    """s = 0.1 in every layer: ±s above s/2 = 0.05, 0 below; W/s = ±0.5 rounds half to even, to 0."""
    weight = torch.tensor([0.09, -0.03, 0.05, -2.0, 0.0625, -0.05, 0.0])
    codes, scale = brevitas_codes(weight)
    assert scale.item() == pytest.approx(0.1) and codes.tolist() == [1.0, 0.0, 0.0, -1.0, 1.0, -0.0, 0.0]
    strategy = get_quantizer("brevitas")
    assert strategy.weight(weight, (), ()).tolist() == pytest.approx([0.1, 0.0, 0.0, -0.1, 0.1, 0.0, 0.0])
    [(int_codes, term_scale)] = strategy.terms(weight * 10, (), ())  # the scale does not follow the weights
    assert int_codes.dtype == torch.int8 and int_codes.tolist() == [1, -1, 1, -1, 1, -1, 0]
    assert term_scale.item() == pytest.approx(0.1)


@needs_brevitas
def test_layers_are_brevitas_layers_and_match_a_stock_one():
    """The ternarized model's layers are Brevitas's; forward and gradients equal a stock
    QuantConv2d with the same weights and Brevitas's ternary weight quantizer."""
    torch.manual_seed(0)
    model = models.get_model("tern_resnet20", quantizer="brevitas")
    layers = dict(ternary_layers(model))
    assert len(layers) == 20 and isinstance(layers["conv_1_3x3"], qnn.QuantConv2d)
    assert isinstance(layers["classifier"], qnn.QuantLinear)

    assert SignedTernaryWeightPerTensorConst.scaling_const == TERNARY_SCALE  # what exports store without Brevitas
    ours = layers["stage_1.0.conv_a"]
    stock = qnn.QuantConv2d(16, 16, 3, padding=1, bias=False, weight_quant=SignedTernaryWeightPerTensorConst)
    stock.weight.data.copy_(ours.weight.data)
    images = torch.randn(2, 16, 8, 8)
    out_ours, out_stock = ours(images), stock(images)
    assert torch.equal(out_ours, out_stock)
    out_ours.square().sum().backward()
    out_stock.square().sum().backward()
    assert torch.equal(ours.weight.grad, stock.weight.grad)
    clamped = ours.weight.abs() > 1.5 * TERNARY_SCALE  # straight through the clamp too: these still learn
    assert clamped.any() and (ours.weight.grad[clamped] != 0).all()
    assert torch.equal(stock.quant_weight().value.detach(), get_quantizer("brevitas").weight(ours.weight, (), ()))


@needs_brevitas
def test_eval_forward_uses_the_cache_and_gives_the_training_values():
    torch.manual_seed(1)
    model = models.get_model("tern_resnet20", quantizer="brevitas").eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        cached = model(images)
        layer = dict(ternary_layers(model))["conv_1_3x3"]
        first = layer.quantized_weight()
        assert layer.quantized_weight() is first  # not re-quantized while the weight is unchanged
    assert torch.allclose(model(images), cached, rtol=0, atol=1e-5)  # Brevitas's own forward (grad enabled)
    stats = layer_stats(layer)
    assert stats["levels"] == 3 and stats["quantizer"] == "brevitas"
    assert stats["alphas"] == [pytest.approx(TERNARY_SCALE)]


@needs_brevitas
def test_brevitas_trains_resumes_exports_and_evaluates(tmp_path, capsys):
    record, top1 = train_resume_export_evaluate(tmp_path, "brevitas")
    assert record["args"]["quantizer"] == "brevitas" and record["epochs_done"] == 3
    assert record["ternary_layers"] and 0 < record["sparsity"] < 1
    assert top1["m.tern"] == top1["model_best.pth.tar"] == top1["m.onnx"]
    out = tmp_path / "eval_without_brevitas"  # the shipped file needs only the rule, not the extra
    argv = ["--evaluate", "--resume", str(tmp_path / "m.tern"), "--save_path", str(out)]
    done = _without_brevitas(f"import main; sys.exit(main.main({argv!r}))")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "results.json").read_text())["top1"] == top1["m.tern"]
    code, err = run_main([*QUICK, "--quantizer", "brevitas", "--tex", "2", "--save_path", str(tmp_path / "r")], capsys)
    assert code == 2 and "no residual expansion" in err


def _without_brevitas(script: str) -> subprocess.CompletedProcess:
    """Run `script` in a Python where `import brevitas` fails, as on the core install."""
    blocker = "import sys; sys.modules['brevitas'] = None; sys.modules['brevitas.nn'] = None\n"
    return subprocess.run([sys.executable, "-c", blocker + script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_without_the_extra_training_is_one_line(tmp_path):
    save = tmp_path / "run"
    done = _without_brevitas(f"import main; sys.exit(main.main({[*QUICK, '--quantizer', 'brevitas', '--save_path', str(save)]!r}))")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("error: the brevitas quantizer trains through Brevitas's layers, "
                                                    "which are not installed: pip install -r requirements-peers.txt")
    assert not save.exists()


def test_requirements_peers_names_brevitas_and_core_does_not():
    with open(os.path.join(ROOT, "requirements-peers.txt")) as handle:
        assert any(line.startswith("brevitas") for line in handle)
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        assert not any("brevitas" in line for line in handle)
