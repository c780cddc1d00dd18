#!/usr/bin/python3
# Writes the PyTorch golden fixtures (tests/fixtures/golden_<name>.bin) that
# tests/unit/core/golden_test.cc reproduces with resdist; not part of the build or of CI
# (the committed .bin files are what the C++ test reads, so it needs no torch).
#
# Run with Debian's PyTorch:  /usr/bin/python3 tests/golden/make_golden.py [--out DIR]
#
# Each network mirrors resdist's model builder (worker/nn/resnet.cc) exactly: the same
# blocks, the same torchvision parameter names, all convolutions without bias, BN eps 1e-5
# momentum 0.1, ReLU after bn1 (and bn2 of a bottleneck) and relu(add) at a block's output.
# Weights are NOT resdist's initialisation: every parameter and buffer is drawn here from a
# seeded generator and written to the fixture, and the C++ test loads all of them by name.
#
# What a fixture holds (train mode, float32, one fixed batch):
#   the spec, input, labels, every parameter and buffer before training, logits and loss of
#   the first forward, every parameter gradient of the first backward, and every parameter
#   and BN buffer after 3 SGD steps on the same batch (each step: forward, loss, backward,
#   step; the first step's forward/backward is the one whose logits/gradients are stored).
#   Optimiser: plain torch.optim.SGD, lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4 on
#   ALL parameters (resdist: SgdOptions{decay_bn_and_bias = true}).
#   Loss: F.cross_entropy, mean over the batch; label smoothing from the spec.
#
# File format (little-endian), read by tests/unit/core/fixture.h:
#   char[4]  magic "RDGF"
#   uint32   version (1)
#   uint32   count (number of entries)
#   count x entry:
#     uint32       name length L
#     char[L]      name (ASCII, no terminator)
#     uint32       ndims D (0 = scalar, one value)
#     int64[D]     dims
#     float32[..]  data, row-major (product of dims values; 1 value when D = 0)
# Entry names:
#   spec.<field>          the network and training setup as float scalars or vectors:
#                         spec.arch (the resdist arch name as ASCII codes, one float each),
#                         spec.num_classes, spec.in_channels, spec.height, spec.width,
#                         spec.batch, spec.shortcut (ASCII code of 'A' or 'B'),
#                         spec.small_input_stem (0/1), spec.base_width,
#                         spec.stage_blocks (vector, one per stage; absent for resmlp),
#                         spec.mlp_width, spec.mlp_hidden, spec.dropout,
#                         spec.label_smoothing, spec.lr, spec.momentum, spec.nesterov (0/1),
#                         spec.weight_decay, spec.sgd_steps
#   input                 (N, C, H, W)
#   labels                (N) class indices, stored as float32
#   logits                (N, K) first forward
#   loss                  scalar, first forward
#   param/<name>          torchvision name, e.g. param/layer1.0.conv1.weight (OIHW)
#   buffer/<name>         running_mean, running_var, num_batches_tracked (as float)
#   grad/<name>           gradient of the first backward, one per parameter
#   after3/param/<name>   parameters after the 3 SGD steps
#   after3/buffer/<name>  BN buffers after the 3 training forwards
import argparse
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock as TvBasicBlock
from torchvision.models.resnet import Bottleneck as TvBottleneck

MAGIC = b"RDGF"
VERSION = 1


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride, 0, bias=False)


# ---------------------------------------------------------------- CIFAR ResNet (He et al. 4.2)
class CifarBasicBlock(nn.Module):
    """out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); option A or B shortcut."""

    def __init__(self, cin, cout, stride, option):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.option_a = False
        self.downsample = None
        if stride != 1 or cin != cout:
            if option == "A":
                self.option_a = True
                self.stride = stride
                self.pad_lo = (cout - cin) // 2
                self.pad_hi = cout - cin - self.pad_lo
            else:
                self.downsample = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.option_a:
            s = x[:, :, :: self.stride, :: self.stride]
            s = F.pad(s, (0, 0, 0, 0, self.pad_lo, self.pad_hi))
        elif self.downsample is not None:
            s = self.downsample(x)
        else:
            s = x
        return F.relu(out + s)


class CifarResNet(nn.Module):
    def __init__(self, in_channels, base_width, stage_blocks, num_classes, option):
        super().__init__()
        w = base_width
        self.conv1 = conv3x3(in_channels, w)
        self.bn1 = nn.BatchNorm2d(w)
        cin = w
        for stage, (width, n) in enumerate(zip([w, 2 * w, 4 * w], stage_blocks)):
            blocks = []
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(CifarBasicBlock(cin, width, stride, option))
                cin = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ------------------------------------------- ImageNet ResNet (torchvision blocks, any width)
class ImageNetResNet(nn.Module):
    """torchvision.models.ResNet with a configurable base width (torchvision fixes 64) and
    the optional small-input stem; blocks are torchvision's own BasicBlock / Bottleneck."""

    def __init__(self, block, in_channels, base_width, stage_blocks, num_classes, small_stem):
        super().__init__()
        w = base_width
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, w, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        cin = w
        for stage, (width, n) in enumerate(zip([w, 2 * w, 4 * w, 8 * w], stage_blocks)):
            blocks = []
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                cout = width * block.expansion
                down = None
                if stride != 1 or cin != cout:
                    down = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
                blocks.append(block(cin, width, stride, down))
                cin = cout
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ------------------------------------------------------------- the dense residual MLP
class MlpBlock(nn.Module):
    def __init__(self, width, hidden, p):
        super().__init__()
        self.dropout = nn.Dropout(p)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return F.relu(x + self.fc2(F.relu(self.fc1(self.dropout(x)))))


class ResMlp(nn.Module):
    def __init__(self, features, width, hidden, num_classes, p):
        super().__init__()
        setattr(self, "input", nn.Linear(features, width))
        self.block = MlpBlock(width, hidden, p)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.relu(getattr(self, "input")(torch.flatten(x, 1)))
        return self.fc(self.block(x))


# ------------------------------------------------------------------------- the networks
NETWORKS = {
    # name: resdist arch, structure, input (N, C, H, W), classes, label smoothing
    "cifar_a": dict(arch="resnet20", shortcut="A", base_width=4, stage_blocks=[1, 1, 1],
                    input=(4, 3, 8, 8), num_classes=5, label_smoothing=0.0),
    "cifar_b": dict(arch="resnet20", shortcut="B", base_width=4, stage_blocks=[1, 1, 1],
                    input=(4, 3, 8, 8), num_classes=5, label_smoothing=0.0),
    # Base width 3, not 4: at width 4 layer4 alone has 23.5k weights and the fixture (three
    # copies of every parameter) would be ~390 KB; 3 keeps every structural feature
    # (layer1.0 still needs a projection: 3 != 4*3) at ~220 KB.
    "bottleneck": dict(arch="resnet50", small_input_stem=True, base_width=3,
                       stage_blocks=[1, 1, 1, 1], input=(2, 3, 16, 16), num_classes=6,
                       label_smoothing=0.0),
    # Batch 4, not 2: layer4 sees 1x1 maps, and with 2 values per channel a training-mode BN
    # has an output of +-1 whose input gradient is pure cancellation (~eps/d^2), which would
    # make every upstream gradient rounding noise rather than a test.
    "resnet_stem": dict(arch="resnet18", small_input_stem=False, base_width=4,
                        stage_blocks=[1, 1, 1, 1], input=(4, 3, 32, 32), num_classes=4,
                        label_smoothing=0.1),
    "mlp": dict(arch="resmlp", mlp_width=32, mlp_hidden=16, input=(4, 1, 6, 6), num_classes=3,
                label_smoothing=0.0),
    # (appended last: the seed of each network is 1000 + its position)
    # Width 8 (8/16/32 channels): the 16 -> 32 option-A shortcut then runs on oneDNN's
    # 16-channel blocked layout (resdist's direct blocked kernel), not on a plain copy.
    "cifar_a16": dict(arch="resnet20", shortcut="A", base_width=8, stage_blocks=[1, 1, 1],
                      input=(4, 3, 8, 8), num_classes=5, label_smoothing=0.0),
}

SGD_STEPS = 3
LR, MOMENTUM, WEIGHT_DECAY, NESTEROV = 0.1, 0.9, 5e-4, True


def build(cfg):
    n, c, h, w = cfg["input"]
    arch = cfg["arch"]
    if arch == "resnet20":
        return CifarResNet(c, cfg["base_width"], cfg["stage_blocks"], cfg["num_classes"],
                           cfg["shortcut"])
    if arch in ("resnet18", "resnet50"):
        block = TvBasicBlock if arch == "resnet18" else TvBottleneck
        return ImageNetResNet(block, c, cfg["base_width"], cfg["stage_blocks"],
                              cfg["num_classes"], cfg["small_input_stem"])
    if arch == "resmlp":
        return ResMlp(c * h * w, cfg["mlp_width"], cfg["mlp_hidden"], cfg["num_classes"], 0.0)
    raise ValueError(f"unknown arch {arch}")


def init_state(model, gen):
    """Seeded weights of a sensible scale (He-normal-like), BN affine and running stats away
    from their defaults so that every term of the BN update is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[1]) ** 0.5)
            elif name.endswith(".weight"):  # BN scale
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            else:  # BN shift, linear bias
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
            # num_batches_tracked stays 0


def as_f32(t):
    # .copy(): numpy() shares storage with a float32 tensor, which SGD then changes in place.
    return t.detach().to(torch.float32).contiguous().cpu().numpy().copy()


def run(cfg, seed, dtype):
    """Returns (entries, model) for one network in `dtype` (float32 for the fixture; float64
    only to measure how far float32 itself is from exact, for the tolerance comment)."""
    gen = torch.Generator().manual_seed(seed)
    model = build(cfg)
    init_state(model, gen)
    x = torch.randn(cfg["input"], generator=gen)
    y = torch.randint(0, cfg["num_classes"], (cfg["input"][0],), generator=gen)
    model = model.to(dtype).train()
    x = x.to(dtype)

    e = {}
    e["input"] = as_f32(x)
    e["labels"] = y.numpy().astype(np.float32)
    for name, p in model.named_parameters():
        e[f"param/{name}"] = as_f32(p)
    for name, b in model.named_buffers():
        e[f"buffer/{name}"] = as_f32(b)

    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=NESTEROV,
                          weight_decay=WEIGHT_DECAY)
    for step in range(SGD_STEPS):
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg["label_smoothing"])
        loss.backward()
        if step == 0:
            e["logits"] = as_f32(logits)
            e["loss"] = as_f32(loss)
            for name, p in model.named_parameters():
                e[f"grad/{name}"] = as_f32(p.grad)
        opt.step()
    for name, p in model.named_parameters():
        e[f"after3/param/{name}"] = as_f32(p)
    for name, b in model.named_buffers():
        e[f"after3/buffer/{name}"] = as_f32(b)
    return e


def spec_entries(cfg):
    n, c, h, w = cfg["input"]
    s = {
        "spec.arch": np.array([ord(ch) for ch in cfg["arch"]], np.float32),
        "spec.num_classes": cfg["num_classes"],
        "spec.in_channels": c,
        "spec.height": h,
        "spec.width": w,
        "spec.batch": n,
        "spec.shortcut": ord(cfg.get("shortcut", "A")),
        "spec.small_input_stem": int(cfg.get("small_input_stem", False)),
        "spec.base_width": cfg.get("base_width", 0),
        "spec.mlp_width": cfg.get("mlp_width", 1024),
        "spec.mlp_hidden": cfg.get("mlp_hidden", 512),
        "spec.dropout": 0.0,
        "spec.label_smoothing": cfg["label_smoothing"],
        "spec.lr": LR,
        "spec.momentum": MOMENTUM,
        "spec.nesterov": int(NESTEROV),
        "spec.weight_decay": WEIGHT_DECAY,
        "spec.sgd_steps": SGD_STEPS,
    }
    if "stage_blocks" in cfg:
        s["spec.stage_blocks"] = np.array(cfg["stage_blocks"], np.float32)
    return {k: np.asarray(v, np.float32) for k, v in s.items()}


def write_fixture(path, entries):
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<II", VERSION, len(entries)))
        for name, arr in entries.items():
            arr = np.ascontiguousarray(arr, dtype="<f4")
            raw = name.encode("ascii")
            f.write(struct.pack("<I", len(raw)))
            f.write(raw)
            f.write(struct.pack("<I", arr.ndim))
            f.write(struct.pack(f"<{arr.ndim}q", *arr.shape))
            f.write(arr.tobytes())


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures"))
    ap.add_argument("--only", nargs="*", help="network names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # reproducible summation order
    torch.use_deterministic_algorithms(True)
    for i, (name, cfg) in enumerate(NETWORKS.items()):
        if args.only and name not in args.only:
            continue
        seed = 1000 + i
        e32 = run(cfg, seed, torch.float32)
        entries = {**spec_entries(cfg), **e32}
        path = os.path.join(args.out, f"golden_{name}.bin")
        write_fixture(path, entries)
        # float32 vs float64 PyTorch: the rounding error a float32 implementation has anyway,
        # which is what the C++ tolerances must cover (printed, not stored).
        e64 = run(cfg, seed, torch.float64)
        worst = {}
        for k, v in e32.items():
            if k.startswith(("logits", "loss", "grad/", "after3/")):
                group = k.split("/")[0] if "/" in k else k
                ref = e64[k].astype(np.float64)
                rel = np.abs(v - ref) / (1e-3 + np.abs(ref))  # rtol-like, atol 1e-3 floor
                worst[group] = max(worst.get(group, 0.0), float(rel.max(initial=0.0)))
        size = os.path.getsize(path)
        print(f"{path}: {len(entries)} entries, {size / 1024:.0f} KB, loss {float(e32['loss']):.6f};"
              f" fp32-vs-fp64 worst |d|/(1e-3+|ref|): "
              + ", ".join(f"{g} {w:.1e}" for g, w in sorted(worst.items())))
        if size >= 300 * 1024:
            sys.exit(f"{path}: {size} bytes, over the 300 KB budget; shrink the network")


if __name__ == "__main__":
    main()
