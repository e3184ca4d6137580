"""Checkpoint safety: atomic writes, the reference's files, refusing pickled code."""
import os
import pickle

import numpy as np
import pytest
import torch

import utils
from models import get_model
from utils.checkpoint import ReferenceRecorderStub, extract_state_dict, load_checkpoint, load_weights, save_checkpoint
from utils.errors import UserError


class RecorderMeter:
    """Shaped like the reference implementation's utils.RecorderMeter."""

    def __init__(self, total_epoch):
        self.total_epoch = total_epoch
        self.current_epoch = 3
        self.epoch_losses = np.zeros((total_epoch, 2), dtype=np.float32)
        self.epoch_accuracy = np.ones((total_epoch, 2), dtype=np.float32)


@pytest.fixture
def reference_recorder(monkeypatch):
    RecorderMeter.__module__ = "utils"
    monkeypatch.setattr(utils, "RecorderMeter", RecorderMeter, raising=False)
    return RecorderMeter(200)


@pytest.mark.parametrize("zip_format", [True, False])
def test_reference_checkpoint_loads_without_running_its_classes(tmp_path, reference_recorder, zip_format):
    model = get_model("tern_resnet20")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 200, "arch": "tern_resnet20", "state_dict": state, "recorder": reference_recorder,
                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict()},
               path, _use_new_zipfile_serialization=zip_format)
    checkpoint = load_checkpoint(str(path))
    assert isinstance(checkpoint["recorder"], ReferenceRecorderStub)
    assert checkpoint["recorder"].epoch_losses.shape == (200, 2)
    fresh = get_model("tern_resnet20")
    load_weights(fresh, extract_state_dict(checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, writer):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth.tar"
    obj = {"state_dict": {}, "payload": Payload(marker)}
    if writer == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(UserError):
        load_checkpoint(str(path))
    assert not os.path.exists(marker)


class SomethingElse:
    pass


def test_unknown_object_is_refused(tmp_path):
    torch.save({"state_dict": {}, "thing": SomethingElse()}, tmp_path / "x.pth")
    with pytest.raises(UserError, match="refusing"):
        load_checkpoint(str(tmp_path / "x.pth"))


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "c.pth.tar"
    save_checkpoint({"state_dict": get_model("resnet20").state_dict()}, str(path))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="cannot read"):
        load_checkpoint(str(path))
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pth"))


def test_atomic_save_keeps_previous_file_on_crash(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth.tar")
    save_checkpoint({"epoch": 1}, path)

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"]


def test_mismatched_state_dict_names_the_keys():
    state = get_model("resnet20").state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["classifier.bias"]
    with pytest.raises(UserError, match=r"missing keys \(1\): classifier.bias; unexpected keys \(1\): extra.weight"):
        load_weights(get_model("tern_resnet20"), state)
    with pytest.raises(UserError, match="shape mismatches"):
        load_weights(get_model("tern_resnet20", num_classes=100), get_model("resnet20").state_dict())


def test_torchvision_state_dict_loads_into_ternary_resnet18():
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    model = get_model("resnet18b_fq_lq_tern_tex_2")
    load_weights(model, extract_state_dict(state))
    assert torch.equal(model.conv1.weight, state["conv1.weight"])

