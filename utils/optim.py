"""The optimizer and the lr schedule of a training run.

    optimizer = make_optimizer(model, "SGD", 0.1, 0.9, 3e-4)            # the paper's CIFAR recipe
    scheduler = make_scheduler(optimizer, [80, 120, 160], [0.1, 0.1, 0.5])
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.ternary import SCALE_NAMES

# Which parameters weight decay applies to (--decay_on).
DECAY_ON = {"all": "every parameter (the paper's code)",
            "weights": "conv and linear weights only, not biases or BatchNorm (as TTQ's code)"}


def make_optimizer(model: nn.Module, name: str, learning_rate: float, momentum: float, weight_decay: float,
                   scale_lr: float = 1.0, nesterov: bool = True, decay_on: str = "all") -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (the CIFAR recipe; plain momentum with nesterov=False, as
    TTQ's code) or Adam (the ImageNet recipe).

    Parameter groups, in this order (a run resumes only into the same groups): the decayed
    parameters; with decay_on="weights" the tensors of one dimension (biases, BatchNorm)
    without weight decay, as TTQ's code decays only its conv and linear weights (and scales);
    the quantizer's trained scales (TTQ's W_p, W_n), without weight decay (they are the
    layer's magnitudes, which decay would pull towards 0) at scale_lr times the learning
    rate (the schedule scales every group)."""
    if decay_on not in DECAY_ON:
        raise ValueError(f"decay_on must be one of {', '.join(DECAY_ON)}, got {decay_on!r}")
    decayed, undecayed, scales = [], [], []
    for parameter_name, parameter in model.named_parameters():
        if parameter_name.rpartition(".")[2] in SCALE_NAMES:
            scales.append(parameter)
        elif decay_on == "weights" and parameter.ndim <= 1:
            undecayed.append(parameter)
        else:
            decayed.append(parameter)
    groups = [{"params": decayed}]
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    if scales:
        groups.append({"params": scales, "weight_decay": 0.0, "lr": learning_rate * scale_lr})
    if name == "SGD":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    return torch.optim.Adam(groups, lr=learning_rate, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: list[int],
                   gammas: list[float]) -> torch.optim.lr_scheduler.LambdaLR:
    """lr(epoch) = learning_rate · Π gamma_i over the schedule epochs already reached."""
    def factor(epoch: int) -> float:
        return math.prod(g for g, milestone in zip(gammas, schedule) if epoch >= milestone)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
