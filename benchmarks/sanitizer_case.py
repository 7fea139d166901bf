"""A small forward + backward through every CUDA kernel, for compute-sanitizer (memcheck, racecheck)."""

import os

import torch

import fastffnn

for tier in ("general", "fused"):
    os.environ["FASTFFNN_CUDA_TIER"] = tier
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for activation in ("tanh", "relu", "sigmoid"):
            model = fastffnn.FastFFNN(37, 45, 7, activation=activation).to("cuda", dtype)
            x = torch.randn(67, 37, device="cuda", dtype=dtype, requires_grad=True)
            y = torch.randint(0, 7, (67,), device="cuda")
            model.nll_loss(x, y).backward()
            (model(x) * torch.randn(67, 7, device="cuda", dtype=dtype)).sum().backward()
            model.log_probs(x).sum().backward()
            fastffnn.softmax_nll(torch.randn(67, 7, device="cuda", dtype=dtype, requires_grad=True),
                                 torch.softmax(torch.randn(67, 7, device="cuda", dtype=dtype), -1)).backward()
torch.cuda.synchronize()
print("sanitizer case done")
