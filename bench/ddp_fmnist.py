#!/usr/bin/env python3
"""PyTorch DDP (gloo) on Fashion-MNIST with the recipe of examples/fmnist-resnet20.yaml, for the
convergence comparison in bench/RESULTS.md (issue 4); not a test.

Reads resdist's HDF5 datasets (docs/dataset-format.md) with h5py: /images (N,H,W,C) uint8,
/labels int32, normalization by the *training* file's mean/std attributes. Same model as the
benchmarks (ResNet-20, option A, bench/pytorch_train.py), same recipe as the resdist run:
global batch 128 split over the processes, SGD lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4,
1 epoch of linear warm-up then cosine to 0 (per step), random crop with zero padding 2, no flip,
the last partial batch dropped, evaluation on the whole test set after every epoch.

  /usr/bin/python3 bench/ddp_fmnist.py --train data/fmnist-train.h5 --eval data/fmnist-test.h5
"""
import argparse
import math
import os
import sys
import time

import h5py
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_train import CifarResNet  # noqa: E402


def load(path, mean=None, std=None):
    with h5py.File(path, "r") as f:
        images = f["/images"][...]
        labels = f["/labels"][...].astype(np.int64)
        if mean is None:
            mean = np.asarray(f.attrs["mean"], dtype=np.float32)
            std = np.asarray(f.attrs["std"], dtype=np.float32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.from_numpy(mean).view(1, -1, 1, 1)) / torch.from_numpy(std).view(1, -1, 1, 1)
    return x.contiguous(), torch.from_numpy(labels), mean, std


def random_crop(x, padding, gen):
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # callers shift pixel 0 to 0 first
    out = torch.empty_like(x)
    offs = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def worker(rank, args, port, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=args.procs)
    xtr, ytr, mean, std = load(args.train)
    xte, yte, _, _ = load(args.eval, mean, std)
    # resdist pads with pixel value 0 before normalization; match it: pad value = -mean/std.
    pad_value = torch.from_numpy(-mean / std).view(1, -1, 1, 1)
    torch.manual_seed(args.seed)
    model = CifarResNet(3, xtr.shape[1], 10).to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    per_rank = args.batch // args.procs
    steps_per_epoch = len(xtr) // args.batch
    total = steps_per_epoch * args.epochs
    warmup = steps_per_epoch * args.warmup_epochs
    gen = torch.Generator().manual_seed(args.seed + 17 * rank)
    step, t_start = 0, time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed + epoch))
        ddp.train()
        for s in range(steps_per_epoch):
            lr = args.lr * (step + 1) / warmup if step < warmup else \
                0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[s * args.batch + rank * per_rank: s * args.batch + (rank + 1) * per_rank]
            xb = xtr[idx] - pad_value
            xb = random_crop(xb, 2, gen) + pad_value  # zero padding in pixel space
            xb = xb.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(xb), ytr[idx]).backward()
            opt.step()
            step += 1
        ddp.eval()
        correct = torch.zeros(1)
        with torch.no_grad():
            shard = range(rank, len(xte), args.procs)
            for i in range(0, len(shard), 500):
                ids = torch.tensor(list(shard[i:i + 500]))
                pred = ddp(xte[ids].contiguous(memory_format=torch.channels_last)).argmax(1)
                correct += (pred == yte[ids]).sum()
        dist.all_reduce(correct)
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}: test accuracy {float(correct) / len(xte):.4f} "
                  f"wall {time.perf_counter() - t_start:.0f} s", flush=True)
    if rank == 0:
        queue.put(float(correct) / len(xte))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128, help="global")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--port", type=int, default=29517)
    args = ap.parse_args()
    if args.batch % args.procs:
        sys.exit(f"ddp_fmnist.py: --batch {args.batch} is not a multiple of --procs {args.procs}")
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(args, args.port, queue), nprocs=args.procs, join=True)
    print(f"final test accuracy {queue.get():.4f}")


if __name__ == "__main__":
    main()
