"""The peer ternarizers (--quantizer twn | ttq): exact forward values, TTQ's gradients
against its equations and autograd, layers and state_dicts, the command line's refusals,
training, resume rules (bit-exact resume: test_main), the packed format (version 2,
version 1 still read) and ONNX."""
import json
import os
import struct

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

import main
import models
from models import get_model, ternarize_model, ternary_layers
from models.quantizers import get_quantizer
from models.ternary import TernConv2d, TernLinear, ttq_masks, ttq_weight, twn_weight
from utils.checkpoint import load_weights
from utils.compression import compression_report
from utils.errors import UserError
from utils.export import export_packed, load_packed
from utils.onnx_export import OnnxModel, export_onnx
from helpers import QUICK, ROOT, results, run_main

WEIGHT = torch.tensor([0.1, -0.5, 1.0, -2.0, 0.05, 0.0, 3.0, -0.3])


def test_twn_forward_hand_computed():
    # mean|W| = 6.95 / 8 = 0.86875, Δ = 0.7 · 0.86875 = 0.608125: 1.0, -2.0 and 3.0 are kept, α = 6 / 3
    assert torch.equal(twn_weight(WEIGHT), torch.tensor([0.0, 0.0, 2.0, -2.0, 0.0, 0.0, 2.0, 0.0]))


def test_twn_keeps_weights_above_the_threshold_and_its_gradient_is_unclipped():
    weight = torch.tensor([1.0, -1.0, 1.5, 0.0, 0.0, -2.5, 0.0, 0.25])  # mean|W| = 0.78125, Δ = 0.546875
    assert torch.equal(twn_weight(weight), torch.tensor([1.5, -1.5, 1.5, 0.0, 0.0, -1.5, 0.0, 0.0]))
    latent = torch.tensor([0.1, -3.0, 5.0], requires_grad=True)  # |W| ≥ 1 passes too (the paper's STE clips)
    get_quantizer("twn").differentiable(latent, (), ()).backward(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(latent.grad, torch.tensor([1.0, 2.0, 3.0]))


def test_ttq_forward_hand_computed():
    # Δ = 0.5 · max|W| = 1.5: only 3.0 is above, only -2.0 below -Δ; 1.0 is not
    positive, negative = torch.tensor(1.5), torch.tensor(0.25)
    assert torch.equal(ttq_weight(WEIGHT, positive, negative, 0.5),
                       torch.tensor([0.0, 0.0, 0.0, -0.25, 0.0, 0.0, 1.5, 0.0]))
    at_threshold = torch.tensor([2.0, 1.0, -1.0, -2.0])  # Δ = 1: W = ±Δ is zero (strict, as TTQ)
    assert torch.equal(ttq_weight(at_threshold, positive, negative, 0.5), torch.tensor([1.5, 0.0, 0.0, -0.25]))


def test_ttq_gradients_follow_the_equations():
    latent = WEIGHT.clone().requires_grad_()
    positive = torch.tensor(1.5, requires_grad=True)
    negative = torch.tensor(0.25, requires_grad=True)
    upstream = torch.arange(1.0, 9.0)  # dL/dT = 1 .. 8
    get_quantizer("ttq").differentiable(latent, (0.05,), (positive, negative)).backward(upstream)
    # Δ = 0.15: positive region {1.0, 3.0} (dL/dT 3, 7), negative {-0.5, -2.0, -0.3} (2, 4, 8), zero the rest,
    # whose factor is the scales' unit (1.5 + 0.25) / 2 = 0.875
    assert positive.grad.item() == 3 + 7
    assert negative.grad.item() == -(2 + 4 + 8)
    assert torch.equal(latent.grad, torch.tensor([1 * 0.875, 2 * 0.25, 3 * 1.5, 4 * 0.25, 5 * 0.875, 6 * 0.875,
                                                  7 * 1.5, 8 * 0.25]))


def test_ttq_scale_gradients_match_autograd_and_finite_differences():
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    images = torch.randn(2, 4, 5, 5, dtype=torch.float64)

    def loss(positive, negative):
        return F.conv2d(images, get_quantizer("ttq").differentiable(weight, (0.05,), (positive, negative))).tanh().sum()

    scales = (torch.tensor(1.3, dtype=torch.float64, requires_grad=True),
              torch.tensor(0.7, dtype=torch.float64, requires_grad=True))
    loss(*scales).backward()
    ours = [scale.grad.clone() for scale in scales]
    pos_mask, neg_mask = ttq_masks(weight, 0.05)
    reference = [scale.detach().clone().requires_grad_() for scale in scales]
    literal = reference[0] * pos_mask - reference[1] * neg_mask  # T written out, differentiated by autograd
    F.conv2d(images, literal).tanh().sum().backward()
    assert torch.allclose(ours[0], reference[0].grad) and torch.allclose(ours[1], reference[1].grad)
    # the forward computes in fp32, so the finite differences are at fp32 precision
    assert torch.autograd.gradcheck(loss, scales, eps=1e-3, atol=1e-2, rtol=1e-3)


def test_ttq_layers_hold_two_trained_scales_in_their_state_dict():
    layer = TernConv2d(3, 4, 3, quantizer="ttq")
    assert set(layer.state_dict()) == {"weight", "bias", "positive_scale", "negative_scale"}
    positive, negative = ttq_masks(layer.weight, 0.05)  # W_p, W_n start at their regions' mean magnitude
    assert layer.positive_scale.item() == pytest.approx(layer.weight[positive].mean().item(), rel=1e-6)
    assert layer.negative_scale.item() == pytest.approx(-layer.weight[negative].mean().item(), rel=1e-6)
    assert layer.scale_count == 2 and layer.tex == 1
    twn = TernLinear(4, 2, quantizer="twn")
    assert set(twn.state_dict()) == {"weight", "bias"} and twn.scale_count == 1
    model = get_model("tern_resnet20", quantizer="ttq")
    scales = [name for name in model.state_dict() if name.endswith(("positive_scale", "negative_scale"))]
    assert len(scales) == 2 * 20
    assert model.build_config["quantizer"] == "ttq"
    with torch.no_grad():
        model.conv_1_3x3.positive_scale.fill_(2.5)
    ternarize_model(model, quantizer="ttq")  # staying TTQ keeps the trained scales
    assert model.conv_1_3x3.positive_scale.item() == 2.5
    ternarize_model(model, quantizer="paper")
    assert not any("scale" in name for name in model.state_dict())


def test_eval_cache_follows_the_scales():
    layer = TernLinear(6, 3, bias=False, quantizer="ttq").eval()
    x = torch.randn(2, 6)
    with torch.no_grad():
        first = layer(x)
        assert layer(x) is not first and torch.equal(layer(x), first)
        cached = layer.quantized_weight()
        assert layer.quantized_weight() is cached  # not re-ternarized while nothing changes
        layer.negative_scale.mul_(3.0)  # an optimiser step on a scale bumps its version
        assert layer.quantized_weight() is not cached
        assert torch.equal(layer.quantized_weight(), layer.effective_weight())
        assert torch.equal(layer(x), F.linear(x, layer.effective_weight()))


def test_refusals_of_the_model_builder():
    with pytest.raises(ValueError, match="no residual expansion"):
        get_model("tern_resnet20", tex=2, quantizer="ttq")
    with pytest.raises(ValueError, match="full precision"):
        get_model("resnet20", quantizer="twn")
    with pytest.raises(ValueError, match="unknown quantizer"):
        get_model("tern_resnet20", quantizer="lsq")


@pytest.mark.parametrize("argv, message", [
    (["--quantizer", "twn", "--tfactors", "0.1"], "--quantizer twn sets its threshold itself"),
    (["--quantizer", "ttq", "--tex", "2"], "the ttq quantizer has no residual expansion (t_ex = 2)"),
    (["--quantizer", "ttq", "--tfactors", "0.05", "0.1"], "the ttq quantizer has no residual expansion (t_ex = 2)"),
    (["--quantizer", "ttq", "--tfactors", "auto"], "--tfactors auto optimises the paper's quantizer"),
    (["--quantizer", "ttq", "--arch", "resnet20"], "--quantizer ttq needs a ternarized arch"),
])
def test_cli_refuses_what_a_quantizer_does_not_have(tmp_path, capsys, argv, message):
    code, err = run_main(argv + QUICK + ["--save_path", str(tmp_path / "run")], capsys)
    assert code == 2 and message in err and err.startswith("error: ")
    assert not (tmp_path / "run").exists()


def test_ttq_trains_records_its_quantizer_and_learns_its_scales(tmp_path):
    folder = tmp_path / "run"
    assert main.main(["--quantizer", "ttq", "--tfactors", "0.1", "--save_path", str(folder)] + QUICK) == 0
    record = results(folder)
    assert record["args"]["quantizer"] == "ttq" and record["ternary_layers"] == 20
    checkpoint = torch.load(folder / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["args"]["quantizer"] == "ttq"
    scales = {k: v for k, v in checkpoint["state_dict"].items() if k.endswith("_scale")}
    assert len(scales) == 40 and all(v.item() != 1.0 for v in scales.values())  # trained, not left at 1
    groups = checkpoint["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 40
    assert all(factors == [0.1] for factors in checkpoint["tfactors"].values())


def test_default_folder_names_the_quantizer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main.main(["--quantizer", "twn"] + QUICK) == 0
    assert os.path.isfile(tmp_path / "save" / "digits_tern_resnet20_qtwn_seed5000" / "results.json")


def test_resume_keeps_the_quantizer_and_a_pre_flag_checkpoint_is_the_papers(tmp_path, capsys):
    folder = tmp_path / "run"
    assert main.main(["--quantizer", "twn", "--epochs", "2", "--subset", "256", "--save_path", str(folder)]) == 0
    code, err = run_main(["--resume", str(folder / "checkpoint.pth.tar"), "--quantizer", "ttq", "--epochs", "3"],
                         capsys)
    assert code == 2 and "--quantizer ttq differs from the run being resumed (twn)" in err
    old = torch.load(folder / "checkpoint.pth.tar", weights_only=True)
    old["args"].pop("quantizer")  # written before the flag existed: the paper's quantizer
    old_path = tmp_path / "old.pth.tar"
    torch.save(old, old_path)
    code, err = run_main(["--resume", str(old_path), "--quantizer", "ttq", "--epochs", "3",
                          "--save_path", str(tmp_path / "old_run")], capsys)
    assert code == 2 and "differs from the run being resumed (paper)" in err


def test_ttq_scales_start_at_the_mean_magnitude_of_their_regions():
    weight = torch.tensor([0.5, -0.2, 1.0, -0.6, 0.04, -0.05])  # Δ = 0.05: 0.04 and -0.05 are zero
    assert [s.item() for s in get_quantizer("ttq").initial_scales(weight, (0.05,))] == pytest.approx([0.75, 0.4])
    assert [s.item() for s in get_quantizer("ttq").initial_scales(torch.zeros(3), (0.05,))] == [0.0, 0.0]


def test_full_precision_weights_load_into_ttq_with_scales_from_the_loaded_weights():
    """Fine-tuning: W_p, W_n are re-derived from the loaded weights, so the ternary network
    starts as the two-scale copy of the pretrained one, not at TTQ's code's scales of 1."""
    plain = get_model("resnet20", num_classes=10)
    torch.manual_seed(3)
    model = get_model("tern_resnet20", num_classes=10, quantizer="ttq")
    load_weights(model, plain.state_dict(), source="fp.pth")
    assert torch.equal(model.conv_1_3x3.weight, plain.conv_1_3x3.weight)
    positive, negative = ttq_masks(plain.classifier.weight, 0.05)
    assert model.classifier.positive_scale.item() == pytest.approx(plain.classifier.weight[positive].mean().item())
    assert model.classifier.negative_scale.item() == pytest.approx(-plain.classifier.weight[negative].mean().item())
    trained = model.state_dict()
    trained["classifier.positive_scale"] = torch.tensor(2.5)
    load_weights(model, trained, source="ttq.pth")  # a TTQ state keeps its trained scales
    assert model.classifier.positive_scale.item() == 2.5
    with pytest.raises(UserError, match="unexpected keys"):  # and TTQ weights do not fit the paper's layers
        load_weights(get_model("tern_resnet20", num_classes=10), model.state_dict(), source="ttq.pth")


def _trained_like(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        for name, parameter in model.named_parameters():
            if name.endswith("_scale"):
                parameter.uniform_(0.3, 2.0)
    return model.eval()


@pytest.mark.parametrize("quantizer", ["twn", "ttq"])
def test_packed_file_rebuilds_the_peer_quantizers_exactly(tmp_path, quantizer):
    model = _trained_like(get_model("tern_resnet20", num_classes=10, quantizer=quantizer))
    path = str(tmp_path / "model.tern")
    export_packed(model, path, input_shape=(3, 32, 32))
    with open(path, "rb") as f:
        assert struct.unpack("<8sH", f.read(10))[1] == 2
    rebuilt = load_packed(path)
    state = rebuilt.state_dict()
    for name, layer in ternary_layers(model):
        assert torch.equal(state[f"{name}.weight"], layer.effective_weight()), name
        if quantizer == "ttq":
            assert set(state[f"{name}.weight"].unique().tolist()) <= {
                0.0, layer.positive_scale.item(), -layer.negative_scale.item()}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert rebuilt.build_config["quantizer"] == quantizer
    report = compression_report(rebuilt, (3, 32, 32))
    assert report["layers"][0]["multiplications"] == 16 * 32 * 32 * (2 if quantizer == "ttq" else 1)


def test_version_1_files_still_load_and_an_unknown_version_is_refused(tmp_path):
    shipped = os.path.join(ROOT, "pretrained", "cifar10", "tern_resnet20_e40_seed5000.tern")
    with open(shipped, "rb") as f:
        data = f.read()
    assert struct.unpack_from("<8sH", data)[1] == 1
    model = load_packed(shipped)
    assert model.build_config.get("quantizer") is None and len(model.packed_codes) == 20
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    future = tmp_path / "future.tern"
    future.write_bytes(data[:8] + struct.pack("<H", 3) + data[10:])
    with pytest.raises(UserError, match="version 3; this code reads versions 1, 2"):
        load_packed(str(future))


@pytest.mark.parametrize("quantizer", ["twn", "ttq"])
def test_onnx_export_stores_int4_codes_with_per_sign_scales(tmp_path, quantizer):
    model = _trained_like(get_model("tern_resnet20", num_classes=10, quantizer=quantizer))
    path = tmp_path / "model.onnx"
    written = export_onnx(model, str(path), (3, 32, 32))
    proto = onnx.load(str(path))
    initializers = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    terms = 2 if quantizer == "ttq" else 1
    for name, layer in ternary_layers(model):
        weight = 0
        for k in range(terms):
            codes = initializers[f"{name}.weight.branch{k}.codes"].astype(np.float32)
            if quantizer == "ttq":  # positive codes with W_p, negative codes with W_n
                assert set(np.unique(codes)) <= ({0.0, 1.0} if k == 0 else {-1.0, 0.0})
            weight = weight + codes * initializers[f"{name}.weight.branch{k}.alpha"]
        assert np.array_equal(weight, layer.effective_weight().numpy()), name
    assert written["ternary_layers"] == 20
    assert sum(node.op_type == "DequantizeLinear" for node in proto.graph.node) == 20 * terms
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    got = OnnxModel(str(path))(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-4


def test_ttq_run_exports_and_evaluates_to_the_same_accuracy(tmp_path):
    folder = tmp_path / "run"
    assert main.main(["--quantizer", "ttq", "--save_path", str(folder)] + QUICK) == 0
    best = str(folder / "model_best.pth.tar")
    for suffix in ("tern", "onnx"):
        exported = str(tmp_path / f"model.{suffix}")
        assert main.main(["--resume", best, "--export", exported]) == 0
        assert main.main(["--evaluate", "--resume", exported, "--save_path", str(tmp_path / f"eval_{suffix}")]) == 0
    assert main.main(["--evaluate", "--resume", best, "--save_path", str(tmp_path / "eval_checkpoint")]) == 0
    top1 = {kind: json.load(open(tmp_path / f"eval_{kind}" / "results.json"))["top1"]
            for kind in ("tern", "onnx", "checkpoint")}
    assert top1["tern"] == top1["checkpoint"] == pytest.approx(top1["onnx"], abs=0.3)


def test_trained_scales_take_their_own_learning_rate_through_the_schedule():
    from utils.optim import make_optimizer, make_scheduler

    model = models.get_model("tern_resnet20", quantizer="ttq")
    optimizer = make_optimizer(model, "SGD", 0.1, 0.9, 3e-4, scale_lr=0.01)
    weights, scales = optimizer.param_groups
    assert (weights["lr"], scales["lr"], scales["weight_decay"]) == (0.1, pytest.approx(0.001), 0.0)
    assert len(scales["params"]) == 2 * len(list(models.ternary_layers(model)))
    scheduler = make_scheduler(optimizer, [1], [0.1])
    optimizer.step()
    scheduler.step()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.01, 0.0001])


def test_decay_on_weights_decays_only_conv_and_linear_weights():
    """--decay_on weights (TTQ's code decays only its conv and fc weights): biases and
    BatchNorm get no decay, the trained scales keep their own group, every parameter is
    in exactly one group."""
    from utils.optim import make_optimizer

    model = models.get_model("tern_resnet20", quantizer="ttq", first_last="first_fp")
    optimizer = make_optimizer(model, "SGD", 0.1, 0.9, 2e-4, scale_lr=0.001, nesterov=False, decay_on="weights")
    decayed, undecayed, scales = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert (decayed["weight_decay"], undecayed["weight_decay"], scales["weight_decay"]) == (2e-4, 0.0, 0.0)
    assert {names[id(p)] for p in decayed["params"]} == {n for n, p in model.named_parameters()
                                                        if n.endswith(".weight") and p.ndim in (2, 4)}
    assert "conv_1_3x3.weight" in {names[id(p)] for p in decayed["params"]}  # the full-precision first conv too
    assert {names[id(p)] for p in undecayed["params"]} == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert {"classifier.bias", "bn_1.weight", "bn_1.bias"} <= {names[id(p)] for p in undecayed["params"]}
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="decay_on must be one of all, weights"):
        make_optimizer(model, "SGD", 0.1, 0.9, 2e-4, decay_on="norms")


def test_ttq_with_its_default_scale_learning_rate_learns_digits(tmp_path):
    # with the weights' learning rate the summed scale gradients flip scales negative within the first
    # epochs (issue 37: 11.7-26% on digits); TTQ's default, a thousandth of it, keeps them positive
    # (83.33% measured with scales starting at 1; 71.11% with TTQ's code's first/last layers)
    run = tmp_path / "run"
    assert main.main(["--quantizer", "ttq", "--epochs", "8", "--print_freq", "1000", "--save_path", str(run)]) == 0
    record = json.loads((run / "results.json").read_text())
    assert record["best_top1"] >= 70 and record["args"]["scale_lr"] == 0.001
    state = torch.load(run / "checkpoint.pth.tar", weights_only=True)["state_dict"]
    assert all(float(value) > 0 for key, value in state.items() if key.endswith(("positive_scale", "negative_scale")))
    assert main.main(["--resume", str(run / "checkpoint.pth.tar"), "--epochs", "9", "--scale_lr", "1"]) == 2


def test_ttq_code_recipe_flags_are_recorded_and_kept_on_resume(tmp_path):
    """--no-nesterov and --first_last first_fp (TTQ's own CIFAR recipe) reach the optimiser and
    the network, are recorded, and a resume that changes them is refused."""
    run = tmp_path / "run"
    assert main.main([*QUICK, "--quantizer", "ttq", "--first_last", "first_fp", "--no-nesterov",
                      "--decay_on", "weights", "--save_path", str(run)]) == 0
    checkpoint = torch.load(run / "checkpoint.pth.tar", weights_only=False)
    groups = checkpoint["optimizer"]["param_groups"]
    assert [group["nesterov"] for group in groups] == [False, False, False]
    assert [group["weight_decay"] for group in groups] == [3e-4, 0.0, 0.0]
    assert checkpoint["args"]["nesterov"] is False and checkpoint["args"]["first_last"] == "first_fp"
    assert checkpoint["args"]["decay_on"] == "weights"
    assert "(conv and linear weights only)" in (run / "log.txt").read_text()
    assert "conv_1_3x3.positive_scale" not in checkpoint["state_dict"]
    assert "classifier.positive_scale" in checkpoint["state_dict"]
    assert main.main(["--resume", str(run / "checkpoint.pth.tar"), "--epochs", "2"]) == 0
    assert json.loads((run / "results.json").read_text())["args"]["nesterov"] is False
    assert main.main(["--resume", str(run / "checkpoint.pth.tar"), "--epochs", "3", "--nesterov"]) == 2
    assert main.main(["--resume", str(run / "checkpoint.pth.tar"), "--epochs", "3", "--decay_on", "all"]) == 2


def test_ttq_fine_tuned_with_its_authors_recipe_learns_digits(tmp_path):
    """README's TTQ recipe (TTQ's code: fine-tune a full-precision model, first conv full
    precision, plain momentum, weight decay 2e-4 on conv and linear weights, lr 0.1 stepped ×0.1
    three times), shortened to 8 + 8 epochs; README's 20 + 20 epochs measured 98.61% → 98.89%."""
    full_precision = tmp_path / "fp"
    assert main.main(["--arch", "resnet20", "--epochs", "8", "--print_freq", "1000",
                      "--save_path", str(full_precision)]) == 0
    run = tmp_path / "ttq"
    assert main.main(["--quantizer", "ttq", "--pretrained", str(full_precision / "model_best.pth.tar"),
                      "--first_last", "first_fp", "--no-nesterov", "--decay", "2e-4", "--decay_on", "weights",
                      "--learning_rate", "0.1",
                      "--epochs", "8", "--schedule", "2", "3", "4", "--gammas", "0.1", "0.1", "0.1",
                      "--print_freq", "1000", "--save_path", str(run)]) == 0
    record = json.loads((run / "results.json").read_text())
    assert record["best_top1"] >= 95, record["best_top1"]
    # the zero region keeps its weights when its gradient factor is the scales' unit (17.1% zeros
    # measured on one thread); with a literal 1 they left it (7.6%)
    assert record["sparsity"] >= 0.12, record["sparsity"]
    state = torch.load(run / "checkpoint.pth.tar", weights_only=True)["state_dict"]
    assert all(float(value) > 0 for key, value in state.items() if key.endswith(("positive_scale", "negative_scale")))


@pytest.mark.parametrize("quantizer, measured", [("twn", 97.78), ("absmean", 96.94), ("brevitas", 95.83)])
def test_the_other_peers_learn_digits_from_scratch(quantizer, measured, tmp_path):
    """The digits recipe at 8 epochs (one thread, while a training run shared the machine, gave
    `measured`; 42%, 31% and 55% zeros). Brevitas's generic 2-bit quantizer (s = max|W|), which
    it used before its ternary one, zeroes nearly every weight: 97.75% zeros, 85.28% at 20 epochs."""
    if quantizer == "brevitas":
        pytest.importorskip("brevitas", reason="Brevitas is an optional extra: pip install -r requirements-peers.txt")
    run = tmp_path / quantizer
    assert main.main(["--quantizer", quantizer, "--epochs", "8", "--print_freq", "1000", "--save_path", str(run)]) == 0
    record = json.loads((run / "results.json").read_text())
    assert record["best_top1"] >= measured - 3, record["best_top1"]
    assert 0.2 <= record["sparsity"] <= 0.7, record["sparsity"]
