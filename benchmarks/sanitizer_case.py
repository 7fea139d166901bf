"""A small forward + backward through every CUDA kernel of fastffnn, for compute-sanitizer (memcheck, racecheck):
both tiers; float32 with exact FMAs and with TF32, bfloat16 and float16 (the three mma.sync paths), float64;
every activation; softmax, log-softmax and the NLL with class indices and probabilities.

Shapes are awkward on purpose: 67 rows (a partial 32-row tile), 37 inputs (a partial 32-column stage), 45
hidden units and 7 classes (partial warps).
"""

import torch

import fastffnn

CASES = [  # (dtype, TF32 allowed)
    (torch.float32, False), (torch.float32, True), (torch.bfloat16, False), (torch.float16, False),
    (torch.float64, False),
]

for tier in ("general", "fused"):
    fastffnn.set_cuda_tier(tier)
    for dtype, tf32 in CASES:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for activation in ("tanh", "relu", "sigmoid"):
            model = fastffnn.FastFFNN(37, 45, 7, activation=activation).to("cuda", dtype)
            x = torch.randn(67, 37, device="cuda", dtype=dtype, requires_grad=True)
            y = torch.randint(0, 7, (67,), device="cuda")
            model.nll_loss(x, y).backward()
            (model(x) * torch.randn(67, 7, device="cuda", dtype=dtype)).sum().backward()
            model.log_probs(x).sum().backward()
            probs = torch.softmax(torch.randn(67, 7, device="cuda", dtype=dtype), -1)
            fastffnn.ffnn_nll(x, model.V.weight, model.V.bias, model.W.weight, model.W.bias, probs,
                              activation=activation, reduction="none").sum().backward()
            fastffnn.softmax_nll(torch.randn(67, 7, device="cuda", dtype=dtype, requires_grad=True), probs).backward()
torch.cuda.synchronize()
print("sanitizer case done")
