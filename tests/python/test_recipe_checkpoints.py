"""A checkpoint of the shipped ResNet recipe (channels_last, SGD) loads into torchvision as it is and
computes what `pe eval` computes."""

import json

import torch
import torchvision
from PIL import Image

from conftest import ROOT, load_tensors, make_image_folder, run_pe


def test_channels_last_resnet18_checkpoint_loads_strictly_into_torchvision(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    make_image_folder(data, classes=3, per_class=6, side=40, val_per_class=2, seed=1)
    recipe = ROOT / "experiments" / "resnet18.toml"
    sets = [f'data.root="{data}"', "model.num_classes=3", "data.img_size=32", "train.batch_size=4",
            'train.device="cpu"', 'train.amp="off"', "train.max_steps=2", f'logging.runs_dir="{runs}"',
            "data.workers=1", "eval.batch_size=6"]
    overrides = [arg for s in sets for arg in ("--set", s)]
    config = (ROOT / "experiments" / "base" / "resnet_imagenet.toml").read_text()
    assert "channels_last = true" in config, "the recipe this test is about trains in channels_last"
    run_pe("train", recipe, *overrides)
    checkpoint = (runs / "resnet18" / "checkpoints" / "last").resolve()

    state = load_tensors(checkpoint / "model.safetensors")
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(state, strict=True)
    assert all(t.is_contiguous() for t in state.values())
    # The SGD momentum buffers are stored in the standard layout too, one per parameter.
    optimizer = load_tensors(checkpoint / "optimizer.safetensors")
    assert len(optimizer) == len(list(model.parameters()))
    assert all(t.is_contiguous() for t in optimizer.values())

    # The weights trained in Rust give the same validation loss in PyTorch (eval mode, the
    # recipe's eval transform: resize to 32/0.875 = 36, centre crop 32, ImageNet normalisation).
    evaluated = run_pe("eval", recipe, "--checkpoint", checkpoint, *overrides)
    rust = json.loads(evaluated.stdout.strip().splitlines()[-1])
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    transform = torchvision.transforms.Compose([
        torchvision.transforms.Resize(36), torchvision.transforms.CenterCrop(32),
        torchvision.transforms.PILToTensor()])
    images, labels = [], []
    for c, folder in enumerate(sorted((data / "val").iterdir())):
        for path in sorted(folder.iterdir()):
            images.append(transform(Image.open(path).convert("RGB")))
            labels.append(c)
    x = (torch.stack(images).float() / 255 - mean) / std
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor(labels)).item()
    assert rust["samples"] == 6
    # Resize kernels differ slightly between pe-data and PIL; the loss agrees to a few percent.
    assert abs(rust["loss"] - loss) <= 0.05 * max(abs(loss), 1.0), (rust, loss)
