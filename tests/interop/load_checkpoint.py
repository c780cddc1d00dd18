#!/usr/bin/python3
"""Load a resdist checkpoint into PyTorch (h5py + torch), and check it.

The format is docs/checkpoint-format.md. The few lines that matter:

    import h5py, torch
    with h5py.File("ckpt-e0003-s000001234.h5", "r") as f:
        state = {name: torch.from_numpy(f["params"][name][()]) for name in f["params"]}
        state.update({name: torch.from_numpy(f["buffers"][name][()]) for name in f["buffers"]})
    model.load_state_dict(state)      # strict: every name and shape must match

where `model` is the PyTorch network with the same architecture (for the CIFAR ResNets,
CifarResNet below; for ResNet-18..152, torchvision's). Momentum goes into torch.optim.SGD's
state as `momentum_buffer` (load_momentum below).

Usage (run with Debian's /usr/bin/python3, which has python3-torch and python3-h5py):
    load_checkpoint.py CKPT [--logits logits.h5] [--eval data.h5] [--expect-accuracy A]
                            [--verify-checksum] [--threads N]
  --logits FILE    compare model(FILE/input) with FILE/logits (written by resdist)
  --eval FILE      evaluate an HDF5 dataset (docs/dataset-format.md): normalize with the file's
                   mean/std attributes, print the accuracy
  --expect-accuracy A   fail unless the --eval accuracy equals A (resdist's own evaluation)
  --verify-checksum     recompute the checkpoint checksum (XXH64, pure Python) and compare
Exit status 0 when every requested check passes.
"""

import argparse
import re
import struct
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT_NAME = "resdist-checkpoint"
FORMAT_VERSION = 1


# ------------------------------------------------------------------- CIFAR ResNet (option A/B)
# The same network as tests/golden/make_golden.py (He et al. 2016, section 4.2), whose
# torchvision-style names resdist uses: conv1, bn1, layer{1,2,3}.{b}.conv{1,2}/bn{1,2},
# layer*.0.downsample.{0,1} (option B), fc.
class CifarBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, option):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.option_a = False
        self.downsample = None
        if stride != 1 or cin != cout:
            if option == "A":  # parameter-free: subsample, zero-pad the new channels
                self.option_a = True
                self.stride = stride
                self.pad_lo = (cout - cin) // 2
                self.pad_hi = cout - cin - self.pad_lo
            else:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                                nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.option_a:
            s = F.pad(x[:, :, :: self.stride, :: self.stride],
                      (0, 0, 0, 0, self.pad_lo, self.pad_hi))
        elif self.downsample is not None:
            s = self.downsample(x)
        else:
            s = x
        return F.relu(out + s)


class CifarResNet(nn.Module):
    def __init__(self, in_channels, base_width, stage_blocks, num_classes, option):
        super().__init__()
        w = base_width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        cin = w
        for stage, (width, n) in enumerate(zip([w, 2 * w, 4 * w], stage_blocks)):
            blocks = []
            for b in range(n):
                blocks.append(CifarBasicBlock(cin, width, 2 if stage > 0 and b == 0 else 1, option))
                cin = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


CIFAR_ARCHS = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
IMAGENET_ARCHS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}


def build_model(arch, params):
    """The PyTorch module for `arch`, its structure read off the checkpoint's shapes."""
    conv1 = params["conv1.weight"].shape  # (width, in_channels, k, k)
    num_classes = params["fc.weight"].shape[0]
    if arch in CIFAR_ARCHS:
        blocks = []
        for stage in (1, 2, 3):
            idx = {int(m.group(1)) for n in params for m in [re.match(rf"layer{stage}\.(\d+)\.", n)] if m}
            blocks.append(len(idx))
        option = "B" if any(".downsample." in n for n in params) else "A"
        return CifarResNet(conv1[1], conv1[0], blocks, num_classes, option)
    if arch in IMAGENET_ARCHS:
        import torchvision

        model = getattr(torchvision.models, arch)(num_classes=num_classes)
        if conv1[0] != 64:
            raise SystemExit(f"{arch}: base width {conv1[0]}; torchvision's {arch} has 64")
        if conv1[2] == 3:  # resdist's small-input stem: 3x3 stride-1 conv, no max pool
            model.conv1 = nn.Conv2d(conv1[1], 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif conv1[1] != 3:
            model.conv1 = nn.Conv2d(conv1[1], 64, 7, 2, 3, bias=False)
        return model
    raise SystemExit(f"architecture {arch!r} is not supported by this snippet")


def read_checkpoint(path):
    """(attributes, params, buffers, momentum) as dicts of numpy arrays."""
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        if attrs.get("format") != FORMAT_NAME or int(attrs.get("format_version", -1)) != FORMAT_VERSION:
            raise SystemExit(f"{path}: not a {FORMAT_NAME} version {FORMAT_VERSION} file "
                             f"(format={attrs.get('format')!r}, version={attrs.get('format_version')})")
        params = {n: f["params"][n][()] for n in f["params"]}
        buffers = {n: f["buffers"][n][()] for n in f["buffers"]}
        momentum = {n: f["optimizer"][n]["momentum"][()] for n in f["optimizer"]}
    return attrs, params, buffers, momentum


def load_model(path):
    attrs, params, buffers, momentum = read_checkpoint(path)
    model = build_model(attrs["arch"], params)
    state = {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in {**params, **buffers}.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, attrs, momentum


def load_momentum(optimizer, model, momentum):
    """Puts resdist's momentum buffers into a torch.optim.SGD built over model.parameters().
    A checkpoint has momentum for every parameter or (before the first step) for none; anything
    else, or a shape mismatch, is an error naming the parameter."""
    named = dict(model.named_parameters())
    if momentum and set(momentum) != set(named):
        missing = sorted(set(named) - set(momentum))[:3]
        extra = sorted(set(momentum) - set(named))[:3]
        raise ValueError(f"momentum does not cover the parameters: missing {missing}, extra {extra}")
    for name, p in named.items():
        if name in momentum:
            if tuple(momentum[name].shape) != tuple(p.shape):
                raise ValueError(f"/optimizer/{name}/momentum has shape {momentum[name].shape}, "
                                 f"parameter has {tuple(p.shape)}")
            optimizer.state[p]["momentum_buffer"] = torch.from_numpy(momentum[name].copy())


# ----------------------------------------------------------------- checksum (pure Python XXH64)
M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc, lane):
    return (_rotl((acc + lane * P2) & M64, 31) * P1) & M64


def xxh64(data, seed=0):
    n = len(data)
    i = 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        lanes = np.frombuffer(data, dtype="<u8", count=(n // 32) * 4).tolist()
        v1, v2, v3, v4 = v
        for k in range(0, len(lanes), 4):
            v1 = _round(v1, lanes[k])
            v2 = _round(v2, lanes[k + 1])
            v3 = _round(v3, lanes[k + 2])
            v4 = _round(v4, lanes[k + 3])
        i = (n // 32) * 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & M64
        for x in (v1, v2, v3, v4):
            h = ((h ^ _round(0, x)) * P1 + P4) & M64
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        h ^= _round(0, struct.unpack_from("<Q", data, i)[0])
        h = (_rotl(h, 27) * P1 + P4) & M64
        i += 8
    if i + 4 <= n:
        h ^= (struct.unpack_from("<I", data, i)[0] * P1) & M64
        h = (_rotl(h, 23) * P2 + P3) & M64
        i += 4
    while i < n:
        h ^= (data[i] * P5) & M64
        h = (_rotl(h, 11) * P1) & M64
        i += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    h ^= h >> 32
    return h


ATTRIBUTE_ORDER = ["format", "format_version", "arch", "epoch", "global_step", "samples_consumed",
                   "seed", "world_size", "job_spec", "created_unix_ms", "created"]


def checksum_stream(path):
    """The canonical byte stream of docs/checkpoint-format.md, "Checksum"."""
    u64 = lambda v: struct.pack("<Q", v)
    text = lambda b: u64(len(b)) + b
    out = bytearray()
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append("/" + n) if isinstance(o, h5py.Dataset) else None)
        for name in sorted(names, key=lambda s: s.encode()):
            a = f[name][()]
            a = np.asarray(a)
            code = {("f", 4): 1, ("i", 8): 2, ("u", 1): 3}[(a.dtype.kind, a.dtype.itemsize)]
            out += text(name.encode()) + bytes([code]) + u64(a.ndim)
            for d in a.shape:
                out += u64(d)
            out += np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        for attr in ATTRIBUTE_ORDER:
            v = f.attrs[attr]
            s = v if isinstance(v, str) else str(int(v))
            out += text(attr.encode()) + text(s.encode())
        stored = f.attrs["checksum"]
    return bytes(out), stored


# ------------------------------------------------------------------------------------- checks
def check_logits(model, path):
    with h5py.File(path, "r") as f:
        x = torch.from_numpy(f["input"][()])
        expected = torch.from_numpy(f["logits"][()])
    with torch.no_grad():
        got = model(x)
    diff = (got - expected).abs()
    tol = 1e-4 + 1e-4 * expected.abs()
    worst = int(torch.argmax(diff - tol))
    print(f"logits: {tuple(got.shape)}, max |torch - resdist| = {diff.max().item():.3e}")
    if not bool((diff <= tol).all()):
        print(f"logits differ: element {worst}: torch {got.flatten()[worst].item()}, "
              f"resdist {expected.flatten()[worst].item()}", file=sys.stderr)
        return False
    return True


def evaluate(model, path, batch=256):
    with h5py.File(path, "r") as f:
        images = f["images"]  # (N, H, W, C) uint8
        labels = f["labels"][()]
        mean = torch.tensor(np.asarray(f.attrs["mean"], dtype=np.float32)).view(1, -1, 1, 1)
        std = torch.tensor(np.asarray(f.attrs["std"], dtype=np.float32)).view(1, -1, 1, 1)
        correct = 0
        with torch.no_grad():
            for i in range(0, len(labels), batch):
                x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float()
                x = (x / 255.0 - mean) / std
                pred = model(x).argmax(1).numpy()
                correct += int((pred == labels[i:i + batch]).sum())
    return correct / len(labels), len(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--logits")
    ap.add_argument("--eval")
    ap.add_argument("--expect-accuracy", type=float)
    ap.add_argument("--verify-checksum", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, attrs, momentum = load_model(args.checkpoint)
    print(f"{args.checkpoint}: {attrs['arch']}, epoch {attrs['epoch']}, step {attrs['global_step']}, "
          f"{sum(p.numel() for p in model.parameters())} parameters, "
          f"momentum for {len(momentum)} of them")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    load_momentum(optimizer, model, momentum)
    ok = True
    if args.verify_checksum:
        stream, stored = checksum_stream(args.checkpoint)
        computed = "xxh64:%016x" % xxh64(stream)
        print(f"checksum: stored {stored}, computed {computed} over {len(stream)} bytes")
        ok &= computed == stored
    if args.logits:
        ok &= check_logits(model, args.logits)
    if args.eval:
        acc, n = evaluate(model, args.eval)
        print(f"accuracy {acc:.6f} on {n} samples of {args.eval}")
        if args.expect_accuracy is not None and abs(acc - args.expect_accuracy) > 0.5 / n:
            print(f"accuracy {acc} differs from resdist's {args.expect_accuracy}", file=sys.stderr)
            ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
