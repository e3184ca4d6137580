"""The shipped models the way PyTorch users load them (issue 36): torch.hub entry points,
utils.pretrained's load_pretrained / list_pretrained, the model card generated from the
manifest, and the preprocessing every model file carries."""
import importlib.util
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import main
import models
from helpers import QUICK, ROOT, rewrite_tern, write_folder
from tools import publish
from utils.data import DATASETS, preprocessing_record
from utils.errors import UserError
from utils.export import export_packed, load_packed
from utils.model_loader import load_model
from utils.onnx_export import OnnxModel
from utils.pretrained import PRETRAINED_ROOT, hub_entry_points, list_pretrained, load_pretrained, read_manifest

MANIFEST = os.path.join(PRETRAINED_ROOT, "cifar10", "manifest.json")
ENTRIES = read_manifest(MANIFEST)["files"]
BATCH = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def hubconf_entry_points() -> list[str]:
    """What torch.hub.list would list: hubconf.py's public callables."""
    spec = importlib.util.spec_from_file_location("hubconf_under_test", os.path.join(ROOT, "hubconf.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sorted(name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_"))


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry["name"] for entry in ENTRIES])
def test_every_shipped_model_loads_through_torch_hub_and_by_name_with_mains_logits(entry):
    reference = load_model(os.path.join(PRETRAINED_ROOT, "cifar10", entry["file"]), DATASETS["cifar10"],
                           "cifar10").model.eval()  # what main.py --evaluate builds
    family = re.sub(r"^fp_", "", entry["name"].rsplit("_e", 1)[0])
    hub_model = torch.hub.load(ROOT, family, source="local", pretrained=True, epochs=entry["epochs"],
                               seed=entry["seed"], verbose=False)
    named = models.load_pretrained(entry["name"])
    with torch.no_grad():
        expected = reference(BATCH)
        for model in (hub_model, named):
            assert not model.training and model.meta["name"] == entry["name"]
            assert torch.equal(model(BATCH), expected)


def test_list_pretrained_is_the_manifest():
    assert list_pretrained() == [entry["name"] for entry in ENTRIES] == models.list_pretrained()


def test_a_tampered_file_is_refused_in_one_line(tmp_path):
    root = tmp_path / "pretrained"
    shutil.copytree(PRETRAINED_ROOT, root)
    entry = next(e for e in ENTRIES if e["file"].endswith(".tern"))
    path = root / "cifar10" / entry["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its manifest") as refused:
        load_pretrained(entry["name"], root=str(root))
    assert "\n" not in str(refused.value)
    family = entry["name"].rsplit("_e", 1)[0]
    with pytest.raises(UserError, match="does not match its manifest"):
        hub_entry_points(str(root))[family](pretrained=True, epochs=entry["epochs"], seed=entry["seed"])


def test_hub_entry_points_are_the_ones_readme_names():
    with open(os.path.join(ROOT, "README.md")) as f:
        block = re.search(r"<!-- hub-entry-points -->(.*?)<!-- /hub-entry-points -->", f.read(), flags=re.S).group(1)
    assert re.findall(r"`(\w+)`", block) == hubconf_entry_points() == sorted(hub_entry_points())


def test_an_untrained_entry_point_is_the_architecture():
    entries = hub_entry_points()
    ternary = entries["twn_resnet20"](pretrained=False)
    assert ternary.training and all(layer.quantizer == "twn" for _, layer in models.ternary_layers(ternary))
    assert not list(models.ternary_layers(entries["resnet20"](pretrained=False)))
    with pytest.raises(UserError, match="no shipped tern_resnet20 with epochs=7"):
        entries["tern_resnet20"](pretrained=True, epochs=7)
    assert "Shipped: epochs=40, seed=5000" in entries["tern_resnet20"].__doc__


def test_the_model_card_is_the_one_the_manifest_gives():
    folder = os.path.join(PRETRAINED_ROOT, "cifar10")
    with open(os.path.join(folder, "README.md")) as f:
        card = f.read()
    assert card == publish.model_card(read_manifest(MANIFEST), "pretrained/cifar10")
    assert card.startswith("---\nlibrary_name: pytorch\n") and "model-index:" in card
    for entry in ENTRIES:
        assert f"- name: {entry['name']}" in card and f"| {entry['name']} | {entry['arch']} |" in card
        assert entry["sha256"][:12] in card and f"{entry['top1']:.2f}" in card
    for section in ("## Training data", "quality 75", "## Intended use and limitations", "@inproceedings{he2019",
                    "## Licence", "not for\nImageNet".replace("\n", " ")[:7]):
        assert section in card


def test_every_shipped_file_carries_its_preprocessing():
    expected = preprocessing_record(DATASETS["cifar10"], "cifar10")
    for entry in ENTRIES:
        model = load_model(os.path.join(PRETRAINED_ROOT, "cifar10", entry["file"]), DATASETS["cifar10"],
                           "cifar10").model
        assert model.preprocessing == expected, entry["file"]
        if entry["file"].endswith(".tern"):
            assert model.input_shape == (3, 32, 32)
        assert {"quantizer", "zeros", "bits_per_weight"} <= entry.keys()


def test_transforms_give_the_training_normalisation_on_a_users_picture(tmp_path):
    model = load_pretrained("tern_resnet20_e40_seed5000")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tensor = model.transforms(Image.fromarray(pixels))
    mean = torch.tensor(DATASETS["cifar10"].mean).view(3, 1, 1) * 255
    std = torch.tensor(DATASETS["cifar10"].std).view(3, 1, 1) * 255
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() - mean) / std  # the training loader's arithmetic
    assert torch.allclose(tensor, expected, atol=1e-5)
    big = model.transforms(Image.fromarray(np.repeat(np.repeat(pixels, 2, 0), 2, 1)).convert("L"))
    assert big.shape == (3, 32, 32)  # any size and mode: resized, centre-cropped, converted
    assert model.classes[int(model(tensor[None]).argmax())] in DATASETS["cifar10"].classes


def test_a_folder_run_keeps_its_normalisation_and_classes_in_every_file_kind(tmp_path):
    data = tmp_path / "data"
    write_folder(data, ["cats", "dogs"], per_class=(6, 2))
    run = tmp_path / "run"
    assert main.main(["--dataset", "folder", "--data_path", str(data), "--arch", "tern_resnet20", "--epochs", "1",
                      "--save_path", str(run)]) == 0
    checkpoint = torch.load(run / "model_best.pth.tar", weights_only=True)
    record = checkpoint["preprocessing"]
    assert record["classes"] == ["cats", "dogs"] and record["dataset"] == "folder" and len(record["mean"]) == 3
    for suffix in ("tern", "onnx"):
        assert main.main(["--resume", str(run / "model_best.pth.tar"), "--dataset", "folder", "--data_path",
                          str(data), "--export", str(tmp_path / f"m.{suffix}")]) == 0
    assert load_packed(str(tmp_path / "m.tern")).preprocessing == record
    assert OnnxModel(str(tmp_path / "m.onnx")).preprocessing == record
    for suffix in ("tern", "onnx"):  # evaluated without --dataset: the file's own record names the data set
        out = tmp_path / f"eval_{suffix}"
        assert main.main(["--evaluate", "--resume", str(tmp_path / f"m.{suffix}"), "--data_path", str(data),
                          "--save_path", str(out)]) == 0
        assert json.loads((out / "results.json").read_text())["dataset"] == "folder"


def test_files_written_before_the_record_still_load(tmp_path):
    torch.manual_seed(0)
    model = models.get_model("tern_resnet20", num_classes=10, in_channels=1)
    export_packed(model, str(tmp_path / "old.tern"))  # no preprocessing, no input shape: the old layout
    loaded = load_packed(str(tmp_path / "old.tern"))
    assert loaded.preprocessing is None
    assert main.main(["--evaluate", "--resume", str(tmp_path / "old.tern"), "--save_path", str(tmp_path / "e")]) == 0


def test_a_digits_checkpoint_records_its_class_names(tmp_path):
    assert main.main([*QUICK, "--save_path", str(tmp_path / "run")]) == 0
    record = torch.load(tmp_path / "run" / "checkpoint.pth.tar", weights_only=True)["preprocessing"]
    assert record == {"dataset": "digits", "input_shape": [1, 8, 8], "mean": [0.3054], "std": [0.376],
                      "classes": [str(d) for d in range(10)]}


def test_a_bad_preprocessing_record_is_refused(tmp_path):
    source = os.path.join(PRETRAINED_ROOT, "cifar10", "tern_resnet20_e40_seed5000.tern")
    edited = rewrite_tern(source, tmp_path / "bad.tern", lambda h: h["preprocessing"].update(std=[0, 1, 1]))
    with pytest.raises(UserError, match="invalid preprocessing record"):
        load_packed(edited)


def test_the_card_command_writes_the_card_without_data(tmp_path):
    shutil.copytree(os.path.join(PRETRAINED_ROOT, "cifar10"), tmp_path / "cifar10")
    (tmp_path / "cifar10" / "README.md").unlink()
    assert publish.main(["--card", "cifar10", "--pretrained", str(tmp_path)]) == 0
    with open(os.path.join(PRETRAINED_ROOT, "cifar10", "README.md")) as f:
        assert (tmp_path / "cifar10" / "README.md").read_text() == f.read()


@pytest.mark.parametrize("name,family,quantizer,first_conv_fp", [
    ("tern_resnet20_e40_seed5000", "tern_resnet20", "paper", False),
    ("fp_resnet32_e40_seed5000", "resnet32", None, True),
    ("ttq_ff_ft_resnet20_e40_seed5000", "ttq_ff_ft_resnet20", "ttq", True),  # TTQ's own recipe, fine-tuned
    ("twn_ft_resnet20_e40_seed5000", "twn_ft_resnet20", "twn", False),
])
def test_names_of_every_variant_give_their_family_and_network(name, family, quantizer, first_conv_fp):
    from utils.pretrained import _untrained, family_of

    assert family_of(name) == family
    arch = "resnet32" if quantizer is None else "tern_resnet20"
    model = _untrained({"name": name, "arch": arch})
    assert (type(model.conv_1_3x3) is torch.nn.Conv2d) == first_conv_fp
    assert {layer.quantizer for _, layer in models.ternary_layers(model)} == ({quantizer} if quantizer else set())


@pytest.mark.parametrize("name,kind", [
    ("tern_resnet20_e40_seed5000", "(ternarized, paper quantizer)"),
    ("fp_resnet20_e200_seed5000", "(full precision)"),
    ("ttq_ff_ft_resnet20_e40_seed5000",
     "(ternarized, ttq quantizer, first conv full precision, fine-tuned from full precision)"),
    ("rel2_auto_resnet20_e40_seed5000", "(ternarized, paper quantizer, REL t_ex = 2, optimised thresholds)"),
])
def test_an_entry_points_help_says_how_its_models_were_made(name, kind):
    from utils.pretrained import _hub_entry, family_of

    entry = {"name": name, "arch": "resnet20", "epochs": 40, "seed": 5000, "dataset": "cifar10"}
    assert f"{family_of(name)}: resnet20 {kind} on cifar10." in _hub_entry(family_of(name), [entry], "").__doc__
