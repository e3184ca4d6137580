"""Checkpoints written the way the authors' reference code writes them: REL bias rule,
pre-0.4.1 state_dicts, resuming their runs, and refusing files that carry code."""
import logging
import os
import pickle
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import main
import utils
from models import get_model, ternary_layers
from utils.checkpoint import extract_state_dict, load_checkpoint, load_weights, restore_model
from utils.errors import UserError
from utils.resume import OptimizerSettings, resume_training
from utils.optim import make_optimizer, make_scheduler
from utils.export import export_packed, load_packed


class RecorderMeter:
    """Shaped like the reference's utils.RecorderMeter: per-epoch (train, val) losses and accuracies."""

    def __init__(self, total_epoch, val_accuracies):
        self.total_epoch = total_epoch
        self.current_epoch = len(val_accuracies)
        self.epoch_losses = np.zeros((total_epoch, 2), dtype=np.float32)
        self.epoch_accuracy = np.zeros((total_epoch, 2), dtype=np.float32)
        self.epoch_accuracy[:len(val_accuracies), 1] = val_accuracies


@pytest.fixture
def reference_module(monkeypatch):
    """Pickle RecorderMeter as the reference's utils.RecorderMeter."""
    RecorderMeter.__module__ = "utils"
    monkeypatch.setattr(utils, "RecorderMeter", RecorderMeter, raising=False)


def reference_ternarize(weight, tfactor):
    """The paper's quantizer, written independently: Δ = t·max|W|, α = mean of |W| ≥ Δ."""
    delta = tfactor * weight.abs().max()
    keep = weight.abs() >= delta
    alpha = weight.abs()[keep].mean()
    return alpha * torch.sign(weight) * keep


class ReferenceRELConv(nn.Module):
    """The reference's REL rule: every branch is a whole conv, its bias included."""

    def __init__(self, conv, tfactors):
        super().__init__()
        self.conv, self.tfactors = conv, tfactors

    def forward(self, x):
        c = self.conv
        return sum(F.conv2d(x, reference_ternarize(c.weight, t), c.bias, c.stride, c.padding, c.dilation, c.groups)
                   for t in self.tfactors)


class ReferenceRELLinear(nn.Module):
    def __init__(self, linear, tfactors):
        super().__init__()
        self.linear, self.tfactors = linear, tfactors

    def forward(self, x):
        return sum(F.linear(x, reference_ternarize(self.linear.weight, t), self.linear.bias) for t in self.tfactors)


def reference_rel_resnet18(state_dict, tfactors, num_classes):
    """torchvision's ResNet-18 holding `state_dict`, every conv and linear layer run by the reference's REL rule."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.load_state_dict(state_dict)
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            wrapper = ReferenceRELConv if isinstance(module, nn.Conv2d) else ReferenceRELLinear
            setattr(parent, child, wrapper(module, tfactors))
    return model.eval()


def trained_like_state(arch, num_classes=10, seed=0):
    """A state_dict with non-zero biases (BatchNorm's and the fc layer's) and BatchNorm
    statistics measured on inputs, so activations keep a realistic scale through the net."""
    torch.manual_seed(seed)
    model = get_model(arch, num_classes=num_classes)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("bias"):
                value.copy_(torch.randn_like(value) * 0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # cumulative average over the batches below
        model.train()
        for _ in range(3):
            model(torch.randn(8, 3, 64, 64))
    return model.state_dict()


def save_reference_checkpoint(path, state, arch, epoch=40, optimizer=None, recorder=None, zip_format=True):
    """Their main.py: DataParallel "module." keys, epoch (epochs done), arch, recorder, optimizer."""
    torch.save({"epoch": epoch, "arch": arch, "state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()),
                "recorder": recorder or RecorderMeter(200, [50.0, 60.0]),
                "optimizer": optimizer or {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": []}]}},
               path, _use_new_zipfile_serialization=zip_format)


@pytest.mark.parametrize("tex", [2, 4])
def test_reference_rel_checkpoint_gives_the_reference_logits(tmp_path, reference_module, tex):
    arch = f"resnet18b_fq_lq_tern_tex_{tex}"
    state = trained_like_state(arch)
    assert state["fc.bias"].abs().min() > 0
    path = tmp_path / "reference.pth.tar"
    save_reference_checkpoint(path, state, arch)
    x = torch.randn(3, 3, 64, 64)
    tfactors = {2: [0.05, 0.1], 4: [0.05, 0.1, 0.15, 0.2]}[tex]  # the reference's literals
    with torch.no_grad():
        expected = reference_rel_resnet18(state, tfactors, 10)(x)
        model = get_model(arch, num_classes=10).eval()
        assert restore_model(model, load_checkpoint(str(path)), str(path)) == ["fc"]
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
        ours = get_model(arch, num_classes=10).eval()
        load_weights(ours, state)
        once = ours(x)  # this project's rule: the reference's logits minus (t_ex - 1)·b
        torch.testing.assert_close(once + (tex - 1) * state["fc.bias"], expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(once, expected, rtol=1e-4, atol=1e-4)
        packed = tmp_path / "reference.tern"
        export_packed(model, str(packed))
        torch.testing.assert_close(load_packed(str(packed)).eval()(x), expected, rtol=1e-4, atol=1e-4)


def test_this_projects_rel_checkpoints_keep_adding_the_bias_once(tmp_path):
    arch = "resnet18b_fq_lq_tern_tex_2"
    state = trained_like_state(arch)
    model = get_model(arch, num_classes=10).eval()
    load_weights(model, state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    path = tmp_path / "ours.pth.tar"
    torch.save({"state_dict": state, "tfactors": {name: [0.05, 0.1] for name, _ in ternary_layers(model)}}, path)
    fresh = get_model(arch, num_classes=10).eval()
    assert restore_model(fresh, load_checkpoint(str(path)), str(path)) == []
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), before, rtol=0, atol=0)


def strip_num_batches_tracked(state):
    """A state_dict as PyTorch <= 0.4.0 saved it: no num_batches_tracked, BatchNorm metadata version 1."""
    old = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    old._metadata = OrderedDict((k, dict(v, version=1) if "bn" in k else v) for k, v in state._metadata.items())
    return old


@pytest.mark.parametrize("zip_format", [True, False])
def test_state_dict_without_num_batches_tracked_loads_in_both_formats(tmp_path, zip_format):
    source = get_model("resnet20")
    state = strip_num_batches_tracked(source.state_dict())
    assert not any(k.endswith("num_batches_tracked") for k in state)
    path = tmp_path / "old.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    model = get_model("tern_resnet20")
    load_weights(model, extract_state_dict(load_checkpoint(str(path))))
    assert torch.equal(model.conv_1_3x3.weight, source.conv_1_3x3.weight)
    torch.nn.Module.load_state_dict(get_model("tern_resnet20"), state, strict=True)  # what PyTorch accepts


def test_real_mismatches_are_still_refused_and_leave_the_model_unchanged():
    model = get_model("tern_resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = strip_num_batches_tracked(get_model("resnet20").state_dict())
    del state["stage_2.0.conv_a.weight"]
    with pytest.raises(UserError, match=r"missing keys \(1\): stage_2.0.conv_a.weight$"):
        load_weights(model, state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    new_format = get_model("resnet20").state_dict()
    del new_format["bn_1.num_batches_tracked"]  # a current file missing it: PyTorch refuses it too
    with pytest.raises(UserError, match="bn_1.num_batches_tracked"):
        load_weights(model, new_format)


def test_pretrained_accepts_a_pre_0_4_1_state_dict(tmp_path, capsys):
    state = strip_num_batches_tracked(get_model("resnet20", num_classes=10, in_channels=1).state_dict())
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    code = main.main(["--arch", "tern_resnet20", "--pretrained", str(tmp_path / "old.pth"), "--epochs", "1",
                      "--save_path", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err


def reference_run(tmp_path, epochs_done=3):
    """A digits run of the reference's tern_resnet20 after `epochs_done` epochs: weights,
    Nesterov-SGD momentum buffers from real steps, and the recorder."""
    torch.manual_seed(1)
    model = get_model("tern_resnet20", num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4, nesterov=True)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,))).backward()
        optimizer.step()
    path = tmp_path / "reference_checkpoint.pth.tar"
    save_reference_checkpoint(path, model.state_dict(), "tern_resnet20", epoch=epochs_done,
                              optimizer=optimizer.state_dict(), recorder=RecorderMeter(20, [80.0, 91.5, 90.0]))
    return path, model, optimizer


def resumed(path, *extra):
    args = main.parse_args(["--resume", str(path), *extra])
    model = get_model("tern_resnet20", num_classes=10, in_channels=1)
    checkpoint = load_checkpoint(str(path))
    restore_model(model, checkpoint, str(path))
    optimizer = make_optimizer(model, args.optimizer, args.learning_rate, args.momentum, args.decay)
    scheduler = make_scheduler(optimizer, args.schedule, args.gammas)
    settings = OptimizerSettings(args.optimizer, args.learning_rate, args.momentum, args.decay)
    state = resume_training(str(path), checkpoint, settings, optimizer, scheduler, 0, logging.getLogger("test").info)
    return args, model, optimizer, scheduler, (state.start_epoch, state.best_acc, state.history)


def test_resume_of_a_reference_run_restores_epoch_and_momentum(tmp_path, reference_module):
    path, trained, trained_optimizer = reference_run(tmp_path)
    args, model, optimizer, scheduler, (start, best, history) = resumed(path)
    assert (start, best, history) == (3, 91.5, [])
    for mine, theirs in zip(model.parameters(), trained.parameters()):
        assert torch.equal(mine, theirs)
        assert torch.equal(optimizer.state[mine]["momentum_buffer"], trained_optimizer.state[theirs]["momentum_buffer"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(args.learning_rate * scheduler.lr_lambdas[0](3))
    assert scheduler.last_epoch == 3 and scheduler.base_lrs == [args.learning_rate]


def test_resume_of_a_reference_run_continues_training(tmp_path, reference_module, capsys):
    path, _, _ = reference_run(tmp_path, epochs_done=18)
    assert main.main(["--resume", str(path), "--save_path", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "resumed reference checkpoint" in out and "at epoch 18" in out and "not restored" in out
    assert "epoch  19/20" in out and "epoch  18/20" not in out


def test_resume_with_another_optimizer_is_refused(tmp_path, reference_module, capsys):
    path, _, _ = reference_run(tmp_path)
    code = main.main(["--resume", str(path), "--optimizer", "Adam", "--save_path", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "trained with the SGD optimizer" in err and err.count("\n") == 1


class Payload:
    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def payloads(marker):
    return {
        "system": Payload(os.system, f"touch {marker}"),
        "subprocess": Payload(subprocess.check_call, ["touch", marker]),
        "eval": Payload(eval, f"open({marker!r}, 'w')"),
        "exec": Payload(exec, f"open({marker!r}, 'w').write('x')"),
    }


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "pickle"])
@pytest.mark.parametrize("kind, global_name", [("system", "system"), ("subprocess", "subprocess.check_call"),
                                               ("eval", "builtins.eval"), ("exec", "builtins.exec")])
def test_payloads_are_refused_by_name_and_never_run(tmp_path, writer, kind, global_name):
    marker = str(tmp_path / "ran")
    path = tmp_path / "evil.pth.tar"
    checkpoint = {"state_dict": get_model("resnet20").state_dict(), "extra": payloads(marker)[kind]}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(checkpoint))
    else:
        torch.save(checkpoint, path, _use_new_zipfile_serialization=writer == "torch_zip")
    with pytest.raises(UserError) as refused:
        load_checkpoint(str(path))
    message = str(refused.value)
    assert "contains code or objects other than tensors and plain data" in message and global_name in message
    assert "weights_only" not in message and "will likely succeed" not in message
    assert not os.path.exists(marker)


def test_damaged_pickle_is_not_called_unsafe(tmp_path):
    path = tmp_path / "damaged.pth"
    path.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01u")  # a pickle without its STOP
    with pytest.raises(UserError, match="cannot read checkpoint .*damaged"):
        load_checkpoint(str(path))


def test_main_prints_the_refusal_in_one_line(tmp_path, capsys):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "x": Payload(os.system, "true")}, path)
    assert main.main(["--evaluate", "--resume", str(path), "--save_path", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to load") and err.count("\n") == 1 and "system" in err


def test_resume_with_weights_only_decay_names_the_flag(tmp_path, reference_module, capsys):
    path, _, _ = reference_run(tmp_path)
    code = main.main(["--resume", str(path), "--decay_on", "weights", "--save_path", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--decay_on all" in err and "3 groups" not in err and err.count("\n") == 1
    assert "2 groups" in err
