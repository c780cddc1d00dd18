#!/usr/bin/python3
# PyTorch DistributedDataParallel side of bench/mpi_vs_ddp.sh: N processes x T threads, gloo
# backend, CIFAR ResNet-20 (bench/pytorch_train.py's model), random data, full training steps
# (forward, cross-entropy, backward with DDP's bucketed all-reduce, SGD momentum). Not a test.
#
#   /usr/bin/python3 bench/ddp_train.py --procs 2 --threads 1 --batch 64 --steps 20 --warmup 3
#
# Prints rank 0's median step time and, last, `images_per_s=<procs * batch / median step>`.
import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_train import build  # noqa: E402  (same model as the single-process benchmark)


def worker(rank, args, port, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(args.threads)  # Debian's build starts with 1 thread otherwise
    dist.init_process_group("gloo", rank=rank, world_size=args.procs)
    torch.manual_seed(args.seed)
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    model = build(args).train().to(memory_format=fmt)
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb)
    torch.manual_seed(args.seed + 1 + rank)  # each rank its own batch
    x = torch.randn(args.batch, args.channels, args.height, args.width).contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch,))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
    if rank == 0:
        queue.put((statistics.median(times), min(times), max(times), float(loss)))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description="PyTorch DDP (gloo) CPU training-step benchmark")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64, help="per process")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layout", choices=["nchw", "channels_last"], default="channels_last")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--port", type=int, default=29517)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.model, args.channels, args.height, args.width, args.classes = "resnet20", 3, 32, 32, 10
    for name in ("procs", "threads", "batch", "steps"):
        if getattr(args, name) < 1:
            sys.exit(f"--{name}: {getattr(args, name)} is not allowed; expected >= 1")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(worker, args=(args, args.port, queue), nprocs=args.procs, join=True,
                       start_method="spawn")
    med, lo, hi, loss = queue.get()
    if not (loss == loss):
        sys.exit("loss became NaN; the benchmark is not measuring a sane step")
    print(f"ddp procs={args.procs} threads={args.threads} batch={args.batch} layout={args.layout} "
          f"step_ms_median={med * 1e3:.2f} step_ms_min={lo * 1e3:.2f} step_ms_max={hi * 1e3:.2f}")
    print(f"images_per_s={args.procs * args.batch / med:.1f}")


if __name__ == "__main__":
    main()
