"""The CIFAR-10 recipe main.py and train_CIFAR10.sh use, pinned to the authors' (their
main.py, train_CIFAR10.sh and models/tern_resnet_cifar.py, as ../shared/PAPER.md lists
them), so the parity behind the CIFAR-10 comparison cannot drift silently (issue 34)."""
import os
import subprocess

import pytest
import torch
import torch.nn as nn

import main
import models
from helpers import ROOT
from utils.data import CIFAR_MEAN, CIFAR_STD, DATASETS, TensorLoader
from utils.optim import make_optimizer, make_scheduler

AUTHORS = dict(epochs=200, optimizer="SGD", learning_rate=0.1, decay=3e-4, batch_size=128, schedule=[80, 120, 160],
               gammas=[0.1, 0.1, 0.5])


def test_the_recipe_main_py_applies_to_cifar10_is_the_authors():
    args = main.parse_args(["--dataset", "cifar10", "--arch", "tern_resnet20"])
    assert {key: getattr(args, key) for key in AUTHORS} == AUTHORS and args.momentum == 0.9
    assert args.manualSeed == 5000 and not args.amp


def test_the_script_passes_the_authors_recipe(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "ARCHS": "resnet20", "VARIANTS": "tern", "SAVE_ROOT": str(tmp_path),
           "PRECISION": "fp32"}
    out = subprocess.run(["bash", "train_CIFAR10.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60).stdout
    assert ("--epochs 200 --optimizer SGD --learning_rate 0.1 --momentum 0.9 --decay 3e-4 --batch_size 128 "
            "--schedule 80 120 160 --gammas 0.1 0.1 0.5 --manualSeed 5000") in out


def test_sgd_is_nesterov_with_decay_on_every_parameter():
    model = models.get_model("tern_resnet20")
    optimizer = make_optimizer(model, "SGD", 0.1, 0.9, 3e-4)
    (group,) = optimizer.param_groups  # one group: BatchNorm and biases decay too, as the authors'
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 3e-4
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    scheduler = make_scheduler(optimizer, AUTHORS["schedule"], AUTHORS["gammas"])
    rates = []
    for epoch in range(200):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [rates[e] for e in (0, 79, 80, 119, 120, 159, 160, 199)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0005, 0.0005])


def test_augmentation_and_normalisation_are_the_authors():
    info = DATASETS["cifar10"]
    assert (info.crop_padding, info.flip, info.image_size) == (4, True, 32)
    assert CIFAR_MEAN == tuple(x / 255 for x in (125.3, 123.0, 113.9))
    assert CIFAR_STD == tuple(x / 255 for x in (63.0, 62.1, 66.7))
    images = torch.full((8, 3, 32, 32), 255, dtype=torch.uint8)
    batch, _ = next(iter(TensorLoader(images, torch.zeros(8), info, 8, train=True, seed=0)))
    padded = torch.isclose(batch, (-torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)).view(1, 3, 1, 1))
    assert padded.any() and not padded.all()  # zero padding (pixel 0) shows where a crop moved the image


def test_initialisation_is_the_authors_except_the_classifier_bias():
    torch.manual_seed(0)
    model = models.get_model("resnet56")
    conv = model.stage_3[0].conv_a.weight
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert conv.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)  # normal(0, sqrt(2 / n)), n = k·k·out
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert model.classifier.bias.abs().sum() > 0  # the authors zero it: the one difference, listed in README
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "classifier bias" in f.read()
