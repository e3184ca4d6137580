"""Architectures and the registry."""
import pytest
import torch
import torchvision

import models
from models import get_model, list_archs
from models.ternary import TernConv2d, ternary_layers

PAPER_ARCHS = ["tern_resnet20", "tern_resnet32", "tern_resnet44", "tern_resnet56", "resnet20", "resnet32", "resnet44",
               "resnet56", "alexnet_vanilla", "tern_alexnet_ff_lf", "tern_alexnet_fq_lq",
               *[f"resnet{d}b_{v}_tex1" for d in (18, 34, 50, 101) for v in ("ff_lf", "fq_lq")],
               "resnet18b_fq_lq_tern_tex_2", "resnet18b_fq_lq_tern_tex_4"]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_every_reference_arch_is_registered():
    assert set(PAPER_ARCHS) <= set(list_archs())


@pytest.mark.parametrize("depth,millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85)])
def test_cifar_resnet_parameter_counts(depth, millions):
    assert round(n_params(get_model(f"tern_resnet{depth}")) / 1e6, 2) == millions


def test_cifar_resnet_reference_names_and_no_shortcut_parameters():
    keys = get_model("tern_resnet20").state_dict().keys()
    assert {"conv_1_3x3.weight", "bn_1.running_mean", "stage_1.0.conv_a.weight", "stage_3.2.bn_b.bias",
            "classifier.weight", "classifier.bias"} <= set(keys)
    assert not any("downsample" in k for k in keys)


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = get_model("resnet20").stage_2[0]
    x = torch.randn(2, 16, 8, 8)
    out = block.downsample(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2]) and not out[:, 16:].any()


@pytest.mark.parametrize("depth", [18, 50])
def test_imagenet_resnet_matches_torchvision(depth):
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    for arch in (f"resnet{depth}", f"resnet{depth}b_ff_lf_tex1"):
        model = get_model(arch).eval()
        model.load_state_dict(reference.state_dict(), strict=True)
        assert n_params(model) == n_params(reference)
    full_precision = get_model(f"resnet{depth}").eval()
    full_precision.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(full_precision(x), reference(x))


def test_imagenet_resnet_ternarizes_downsample_and_ff_lf_keeps_ends():
    model = get_model("resnet18b_ff_lf_tex1")
    assert isinstance(model.layer2[0].downsample[0], TernConv2d)
    assert type(model.conv1) is torch.nn.Conv2d and type(model.fc) is torch.nn.Linear
    full = get_model("resnet18b_fq_lq_tex1")
    assert isinstance(full.conv1, TernConv2d)


def test_alexnet_layout():
    model = get_model("tern_alexnet_ff_lf")
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.bias) for c in convs[:2]] == [(96, (11, 11), (4, 4), None),
                                                                                     (256, (5, 5), (1, 1), None)]
    assert [m.in_features for m in model.classifier if isinstance(m, torch.nn.Linear)] == [9216, 4096, 4096]
    assert type(convs[0]) is torch.nn.Conv2d and isinstance(convs[1], TernConv2d)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_rel_archs_and_overrides():
    assert get_model("resnet18b_fq_lq_tern_tex_4").conv1.tfactors == (0.05, 0.1, 0.15, 0.2)
    model = get_model("tern_resnet20", tex=2)
    assert all(layer.tfactors == (0.05, 0.1) for _, layer in ternary_layers(model))
    model = get_model("resnet20", tfactors=[0.03], first_last=False)
    assert type(model.conv_1_3x3) is torch.nn.Conv2d and model.stage_1[0].conv_a.tfactors == (0.03,)
    with pytest.raises(ValueError, match="full precision"):
        get_model("resnet20", first_last=False)
    with pytest.raises(ValueError, match="disagrees"):
        get_model("tern_resnet20", tex=2, tfactors=[0.05])


@pytest.mark.parametrize("first_last,first_fp,last_fp", [
    (None, False, False), ("tern", False, False), (True, False, False), ("fp", True, True), (False, True, True),
    ("first_fp", True, False),  # TTQ's own CIFAR code: conv0 full precision, the classifier ternarized
])
def test_first_last_settings_keep_the_named_end_layers_full_precision(first_last, first_fp, last_fp):
    model = get_model("tern_resnet20", first_last=first_last, quantizer="ttq")
    assert (type(model.conv_1_3x3) is torch.nn.Conv2d) == first_fp
    assert (type(model.classifier) is torch.nn.Linear) == last_fp
    assert len(list(ternary_layers(model))) == 20 - first_fp - last_fp
    assert model.build_config["first_last"] == {None: True, "tern": True, "fp": False}.get(first_last, first_last)
    with pytest.raises(ValueError, match="unknown first/last setting 'last_fp'; valid: tern, fp, first_fp"):
        get_model("tern_resnet20", first_last="last_fp")


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="valid archs: .*tern_resnet20"):
        get_model("resnet21")


@pytest.mark.parametrize("arch", list_archs())
def test_every_arch_trains_one_step_and_has_few_levels(arch):
    family = models.ARCHS[arch].family
    size = 16 if family == "cifar" else (64 if "alexnet" not in arch else 96)
    model = get_model(arch, num_classes=5, in_channels=1 if family == "cifar" else 3)
    x = torch.randn(2, model_in_channels(model), size, size)
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    for _, layer in ternary_layers(model):
        assert layer.weight.grad is not None
        assert layer.effective_weight().unique().numel() <= 2 * layer.tex + 1


def model_in_channels(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


def test_any_input_size_for_cifar_resnet():
    model = get_model("tern_resnet20", in_channels=1).eval()
    with torch.no_grad():
        for size in (8, 28, 32):
            assert model(torch.randn(1, 1, size, size)).shape == (1, 10)
