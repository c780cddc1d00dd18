#!/usr/bin/python3
# PyTorch side of bench/cpu_vs_pytorch.sh: times full training steps (forward, cross-entropy,
# backward, SGD momentum step) of the models resdist_train_bench times; not a test.
#
#   /usr/bin/python3 bench/pytorch_train.py --model resnet20 --batch 128 --threads 2 \
#       --layout channels_last --steps 20 --warmup 3
#
# Models: CIFAR ResNet-20 with option-A shortcuts (He et al. 2016, 4.2; written here, as
# torchvision has none) and torchvision's resnet18 with the small-input stem (conv1 3x3
# stride 1, no max pool), as resdist builds them. Random inputs and labels, train mode,
# SGD lr 0.1 momentum 0.9 weight decay 5e-4 (as resdist_train_bench). Prints the median step
# time and, last, `images_per_s=<batch / median step time>`.
import argparse
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class CifarBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.option_a = stride != 1 or cin != cout
        self.stride = stride
        self.pad_lo = (cout - cin) // 2
        self.pad_hi = cout - cin - self.pad_lo

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        s = x
        if self.option_a:  # parameter-free: subsample, zero-pad channels
            s = F.pad(x[:, :, :: self.stride, :: self.stride],
                      (0, 0, 0, 0, self.pad_lo, self.pad_hi))
        return F.relu(out + s, inplace=True)


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage, in_channels, num_classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin, layers = width, []
        for stage, w in enumerate([width, 2 * width, 4 * width]):
            for b in range(blocks_per_stage):
                layers.append(CifarBasicBlock(cin, w, 2 if stage > 0 and b == 0 else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x)), inplace=True))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(args):
    if args.model == "resnet20":
        return CifarResNet(3, args.channels, args.classes)
    import torchvision
    m = torchvision.models.resnet18(num_classes=args.classes)
    m.conv1 = nn.Conv2d(args.channels, 64, 3, 1, 1, bias=False)  # small-input stem
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    m.maxpool = nn.Identity()
    return m


def main():
    ap = argparse.ArgumentParser(description="PyTorch CPU training-step benchmark")
    ap.add_argument("--model", choices=["resnet20", "resnet18"], default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layout", choices=["nchw", "channels_last"], default="nchw")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--height", type=int, default=None, help="default 32 (resnet20), 64 (resnet18)")
    ap.add_argument("--width", type=int, default=None, help="default: --height")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.height is None:
        args.height = 32 if args.model == "resnet20" else 64
    if args.width is None:
        args.width = args.height
    for name in ("batch", "threads", "steps", "channels", "height", "width"):
        if getattr(args, name) < 1:
            sys.exit(f"--{name}: {getattr(args, name)} is not allowed; expected >= 1")
    if args.warmup < 0:
        sys.exit(f"--warmup: {args.warmup} is not allowed; expected >= 0")
    if args.classes < 2:
        sys.exit(f"--classes: {args.classes} is not allowed; expected >= 2")

    torch.set_num_threads(args.threads)  # Debian's build starts with 1 thread otherwise
    torch.manual_seed(args.seed)
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    model = build(args).train().to(memory_format=fmt)
    x = torch.randn(args.batch, args.channels, args.height, args.width).contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
    if not torch.isfinite(loss):
        sys.exit(f"loss became {loss.item()}; the benchmark is not measuring a sane step")
    med = statistics.median(times)
    print(f"model={args.model} batch={args.batch} threads={args.threads} layout={args.layout} "
          f"input={args.channels}x{args.height}x{args.width} step_ms_median={med * 1e3:.2f} "
          f"step_ms_min={min(times) * 1e3:.2f} step_ms_max={max(times) * 1e3:.2f}")
    print(f"images_per_s={args.batch / med:.1f}")


if __name__ == "__main__":
    main()
