"""BitNet b1.58's absmean ternarizer (--quantizer absmean, issue 37) against hand-computed
values, end to end through training, resume, export and evaluation; and the quantizer
registry it was added through (one file per method)."""
import os

import pytest
import torch
import torch.nn.functional as F

import models
from helpers import ROOT, run_main, train_resume_export_evaluate
from models.quantizers import QUANTIZERS, get_quantizer
from models.quantizers.absmean import absmean_weight
from models.ternary import TernConv2d, TernLinear


def test_absmean_weight_by_hand():
    weight = torch.tensor([0.75, -0.125, 0.25, -1.5, 0.0, 0.625])
    gamma = 3.25 / 6  # mean |W|
    # W/γ = 1.38, −0.23, 0.46, −2.77, 0, 1.15 → round, clamp → 1, 0, 0, −1, 0, 1
    expected = torch.tensor([gamma, 0.0, 0.0, -gamma, 0.0, gamma])
    assert torch.allclose(absmean_weight(weight), expected, rtol=0, atol=1e-7)
    # γ = 1 exactly: |W| = γ/2 rounds half to even, to 0
    assert absmean_weight(torch.tensor([2.0, 0.5, -0.5, 1.0])).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert absmean_weight(torch.zeros(4)).tolist() == [0.0, 0.0, 0.0, 0.0]  # γ floored at 1e-5: no 0/0
    assert absmean_weight(torch.tensor([1.0, 3.0], dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_absmean_gradient_passes_straight_through():
    latent = torch.tensor([0.75, -0.125, 2.5, -1.5], requires_grad=True)  # |W| ≥ 1 too: unclipped
    get_quantizer("absmean").differentiable(latent, (), ()).backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert latent.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_absmean_layers_apply_their_terms():
    torch.manual_seed(0)
    conv = TernConv2d(3, 4, 3, quantizer="absmean")
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(conv(images), F.conv2d(images, absmean_weight(conv.weight), conv.bias))
    terms = conv.ternary_terms()
    assert len(terms) == 1 and terms[0][0].dtype == torch.int8
    assert torch.equal(terms[0][0].float() * terms[0][1], absmean_weight(conv.weight))
    assert TernLinear(4, 2, quantizer="absmean").scale_count == 1


@pytest.mark.parametrize("flags,expected", [
    (["--tex", "2"], "no residual expansion"), (["--tfactors", "0.1"], "drop --tfactors"),
    (["--tfactors", "auto"], "--tfactors auto optimises the paper's quantizer"),
    (["--arch", "resnet20"], "needs a ternarized arch"),
])
def test_absmean_refusals(flags, expected, tmp_path, capsys):
    code, err = run_main(["--quantizer", "absmean", *flags, "--save_path", str(tmp_path / "r")], capsys)
    assert code == 2 and expected in err
    assert not (tmp_path / "r").exists()


def test_absmean_trains_resumes_exports_and_evaluates(tmp_path, capsys):
    record, top1 = train_resume_export_evaluate(tmp_path, "absmean")
    assert record["args"]["quantizer"] == "absmean" and record["epochs_done"] == 3
    assert top1["m.tern"] == top1["model_best.pth.tar"] == top1["m.onnx"]
    from utils.export import load_packed

    packed = load_packed(str(tmp_path / "m.tern"))
    assert packed.build_config["quantizer"] == "absmean"
    assert all(codes.tex == 1 and codes.negative_alphas is None for codes in packed.packed_codes.values())


def test_each_quantizer_is_one_registered_file():
    folder = os.path.join(ROOT, "models", "quantizers")
    files = sorted(name[:-3] for name in os.listdir(folder) if name.endswith(".py") and name != "__init__.py")
    assert sorted(QUANTIZERS) == files and QUANTIZERS[:3] == ("paper", "twn", "ttq")
    for name in QUANTIZERS:
        strategy = get_quantizer(name)
        assert strategy.name == name and type(strategy).__module__ == f"models.quantizers.{name}"
    assert models.QUANTIZERS == QUANTIZERS
    with pytest.raises(ValueError, match="unknown quantizer 'nosuch'; valid quantizers: paper, twn, ttq, absmean, brevitas"):
        get_quantizer("nosuch")


def test_training_doc_shows_the_absmean_class_as_it_is():
    """docs/training.md's "Adding a quantizer" shows absmean.py's class; it must not drift."""
    with open(os.path.join(ROOT, "docs", "training.md")) as handle:
        doc = handle.read()
    with open(os.path.join(ROOT, "models", "quantizers", "absmean.py")) as handle:
        source = handle.read()
    shown = doc.split("```python\n@register\nclass AbsmeanQuantizer", 1)[1].split("```", 1)[0]
    assert "@register\nclass AbsmeanQuantizer" + shown in source
