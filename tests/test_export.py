"""Packed ternary export: codes, file format, exact rebuild, compression, report."""
import io
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from models import get_model
from models.ternary import TernConv2d, ternary_layers
from utils.compression import compression_report
from utils.errors import UserError
from utils.export import export_packed, load_packed, pack_digits, packed_size, packing_layout, unpack_digits


@pytest.mark.parametrize("base,layout,bits", [(3, (5, 8), 1.6), (5, (3, 7), 7 / 3), (9, (5, 16), 3.2)])
def test_dense_layout_bits_per_weight(base, layout, bits):
    assert packing_layout(base) == layout
    assert packed_size(10**6, base) * 8 / 10**6 == pytest.approx(bits, abs=1e-4)


@pytest.mark.parametrize("encoding", ["dense", "2bit"])
@pytest.mark.parametrize("base", [3, 5, 9])
@pytest.mark.parametrize("digits", ["random", "zeros", "min", "max", "empty", "odd"])
def test_pack_unpack_round_trip(encoding, base, digits):
    rng = np.random.default_rng(base)
    values = {"random": rng.integers(0, base, 1000), "zeros": np.full(13, base // 2), "min": np.zeros(7),
              "max": np.full(11, base - 1), "empty": np.zeros(0), "odd": rng.integers(0, base, 5 * 7 + 3)}[digits]
    values = values.astype(np.uint8)
    group, group_bits = packing_layout(base, encoding)
    packed = pack_digits(values, base, group, group_bits)
    assert len(packed) == packed_size(values.size, base, encoding)
    assert np.array_equal(unpack_digits(packed, values.size, base, group, group_bits), values)


def _randomise_batchnorm(model):
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight, 1.0, 0.1)
            nn.init.normal_(module.bias, 0.0, 0.1)
    return model.eval()


@pytest.mark.parametrize("arch,size", [("tern_resnet20", 32), ("resnet18b_ff_lf_tex1", 32),
                                       ("resnet18b_fq_lq_tern_tex_2", 32), ("resnet18b_fq_lq_tern_tex_4", 32)])
def test_rebuilt_model_is_exact(tmp_path, arch, size):
    model = _randomise_batchnorm(get_model(arch, num_classes=10))
    path = str(tmp_path / "model.tern")
    export_packed(model, path)
    rebuilt = load_packed(path)
    ternary = dict(ternary_layers(model))
    rebuilt_state = rebuilt.state_dict()
    for name, layer in ternary.items():
        assert torch.equal(rebuilt_state[f"{name}.weight"], layer.effective_weight()), name
    for key, value in model.state_dict().items():
        if key.rpartition(".")[0] not in ternary:
            assert torch.equal(rebuilt_state[key], value), key
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=1e-5, atol=1e-5)


def _fp32_state_dict_bytes(model):
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


@pytest.mark.parametrize("arch,minimum", [("tern_resnet20", 16.0), ("resnet18b_fq_lq_tex1", 19.0),
                                          ("resnet18b_fq_lq_tern_tex_2", 13.0)])
def test_compression_ratio(tmp_path, arch, minimum):
    model = get_model(arch)
    size = export_packed(model, str(tmp_path / "m.tern"))
    assert size == os.path.getsize(tmp_path / "m.tern")
    assert _fp32_state_dict_bytes(model) / size >= minimum


def test_two_bit_encoding_round_trips(tmp_path):
    model = _randomise_batchnorm(get_model("tern_resnet20"))
    dense = export_packed(model, str(tmp_path / "d.tern"))
    simple = export_packed(model, str(tmp_path / "s.tern"), encoding="2bit")
    assert simple > dense
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_packed(str(tmp_path / "s.tern"))(x), model(x))


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "version"])
def test_damaged_file_is_rejected(tmp_path, damage):
    path = tmp_path / "m.tern"
    export_packed(get_model("tern_resnet20"), str(path))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "magic":
        data[0:8] = b"NOTTERN!"
    else:
        data[8] = 99
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum|magic|version"):
        load_packed(str(path))


def test_report_counts_macs_and_levels():
    model = nn.Sequential(TernConv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(18, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -1.0, 0.01, 0.5, 0, 0, 0, 0, 0]).repeat(2, 1).view(2, 1, 3, 3))
    report = compression_report(model, (1, 5, 5))
    conv, linear = report["layers"]
    assert conv["macs"] == 2 * 9 * 9 and conv["nonzero_macs"] == 2 * 3 * 9 and conv["levels"] == 3
    assert conv["add_only_macs"] == 54 and conv["multiplications"] == 2 * 9
    assert not linear["ternary"] and linear["multiplications"] == linear["macs"] == 72
    assert report["totals"]["macs"] == 162 + 72


def test_report_of_packed_model_matches_the_live_one(tmp_path):
    model = get_model("tern_resnet20")
    size = export_packed(model, str(tmp_path / "m.tern"))
    live = compression_report(model, (3, 32, 32), size)
    loaded = compression_report(load_packed(str(tmp_path / "m.tern")), (3, 32, 32), size)
    stage = 2_359_296  # a 3×3 conv with C in/out channels on a (32·16/C)² map: 9·C²·(512/C)² MACs
    expected_macs = 16 * 3 * 9 * 32 * 32 + 6 * stage + 2 * (stage // 2 + 5 * stage) + 64 * 10
    assert live["totals"] == loaded["totals"] and live["totals"]["macs"] == expected_macs
    assert live["compression_ratio"] >= 16
