"""FastFFNN under DistributedDataParallel: sklearn's digits split across processes.

Launch (CPU processes, gloo; on GPUs use --backend nccl, one process per GPU):

    torchrun --standalone --nproc_per_node=2 examples/ddp_digits.py --epochs 5

Each process trains on its own shard of every batch; DDP averages the
gradients across processes after backward, exactly as for a stock module.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch.nn.parallel import DistributedDataParallel as DDP

from fastffnn import FastFFNN


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="gloo")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    args = p.parse_args()
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if args.backend == "nccl" else \
        torch.device("cpu")
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32, device=device)
    y = torch.tensor(digits.target, device=device)
    torch.manual_seed(0)  # the same initial weights in every process
    model = DDP(FastFFNN(64, 64, 10).to(device))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch)).to(device)
        step = args.batch_size * world
        for i in range(0, len(y) - step + 1, step):
            idx = order[i + rank * args.batch_size:i + (rank + 1) * args.batch_size]
            opt.zero_grad()
            loss = torch.nn.functional.nll_loss(torch.log(model(x[idx])), y[idx])
            loss.backward()  # DDP all-reduces the gradients here
            opt.step()
        with torch.no_grad():
            acc = (model(x).argmax(-1) == y).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}, accuracy {acc:.2%} ({world} processes)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
