"""Benchmark: mtlgen's hand-written tensor kernels against the library call each one replaces.

Each kernel exists only because it is faster where the model runs it; this bench is the proof.
At the shapes of the default model (params.yaml: 56 x 64 x 56 grid, features [8, 16, 32, 64],
batch 2, 3 context visits), it times forward + backward (forward only where the kernel carries no
gradient) of

- ``blocks.upsample_linear`` (separable 2x linear upsampling with a hand-written transpose as its
  backward) vs ``F.interpolate(mode="trilinear")``;
- ``blocks._pointwise`` (1x1 projection as an einsum on the contiguous tensor) vs a 1x1
  ``F.conv3d``;
- ``priors.dilate`` (separable max of shifted copies) vs ``F.max_pool3d`` (stride 1);
- ``priors.gaussian_blur`` (separable weighted shifted copies, differentiable sigma) vs MONAI's
  ``separable_filtering`` (separable convolutions) with the same normalised kernel;
- ``mtl_net.class_labels`` vs ``argmax``; ``mtl_net.class_channels`` vs ``F.one_hot`` + ``movedim``,

and prints the median time of each, the ratio hand-written / library (below 1: the hand-written
kernel pays) and the largest difference of their results. CPU by default (the machine mtlgen's
figures come from); ``--device cuda`` on a GPU.

    .venv/bin/python bench/kernels.py --threads 2 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after two warm-up runs."""
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _forward_backward(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable:
    def run():
        for x in inputs:
            x.grad = None
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        return out

    return run


def _cases(device: torch.device) -> list[tuple[str, Callable, Callable, Callable]]:
    """(name, hand-written, library, result comparison) at the default model's shapes."""
    from monai.networks.layers import separable_filtering

    from mtlgen.models.blocks import _pointwise, upsample_linear
    from mtlgen.models.labels import class_channels, class_labels
    from mtlgen.models.priors import dilate, gaussian_blur

    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=False):
        x = torch.rand(*shape, generator=g).to(device)
        return x.requires_grad_(grad)

    full, half = (56, 64, 56), (28, 32, 28)
    feats = rand(2, 8, *half, grad=True)  # a head's projected decoder features
    wide = rand(2, 8, *full, grad=True)  # a head's hidden layer at full resolution
    weight = rand(6, 8, grad=True)
    region = rand(2, 1, *full)
    probs = rand(2, 3, *full).softmax(dim=1)
    labels = torch.randint(0, 3, (2, 3, *full), generator=g).to(device)
    blur_in = rand(2, 2, *full, grad=True)
    sigma = torch.tensor(0.75, device=device, requires_grad=True)

    def monai_blur(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(-2, 3, device=device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (offsets / s) ** 2)
        return separable_filtering(x, [kernel / kernel.sum()] * 3)

    def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.detach().float() - b.detach().float()).abs().max())

    return [
        (
            "upsample_linear 2x (fwd+bwd)",
            _forward_backward(lambda x: upsample_linear(x, full), feats),
            _forward_backward(
                lambda x: F.interpolate(x, size=full, mode="trilinear", align_corners=False), feats
            ),
            lambda: max_diff(
                upsample_linear(feats, full),
                F.interpolate(feats, size=full, mode="trilinear", align_corners=False),
            ),
        ),
        (
            "pointwise 1x1 projection (fwd+bwd)",
            _forward_backward(_pointwise, weight, wide),
            _forward_backward(lambda w, x: F.conv3d(x, w[..., None, None, None]), weight, wide),
            lambda: max_diff(
                _pointwise(weight, wide), F.conv3d(wide, weight[..., None, None, None])
            ),
        ),
        (
            "dilate radius 2 (fwd)",
            lambda: dilate(region, 2),
            lambda: F.max_pool3d(region, 5, stride=1, padding=2),
            lambda: max_diff(dilate(region, 2), F.max_pool3d(region, 5, stride=1, padding=2)),
        ),
        (
            "gaussian_blur sigma 0.75 (fwd+bwd)",
            _forward_backward(lambda x, s: gaussian_blur(x, s), blur_in, sigma),
            _forward_backward(monai_blur, blur_in, sigma),
            lambda: max_diff(gaussian_blur(blur_in, sigma), monai_blur(blur_in, sigma)),
        ),
        (
            "class_labels (fwd)",
            lambda: class_labels(probs),
            lambda: probs.argmax(dim=1),
            lambda: max_diff(class_labels(probs), probs.argmax(dim=1)),
        ),
        (
            "class_channels (fwd)",
            lambda: class_channels(labels, 2),
            lambda: F.one_hot(labels, 3).movedim(-1, 2).float(),
            lambda: max_diff(class_channels(labels, 2), F.one_hot(labels, 3).movedim(-1, 2)),
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per kernel (median)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {args.threads} threads, median of {args.repeats} runs")
    print(f"{'kernel':38s} {'ours ms':>9s} {'library ms':>11s} {'ratio':>7s} {'max diff':>9s}")
    for name, ours, library, compare in _cases(device):
        t_ours, t_lib = _time(ours, args.repeats, device), _time(library, args.repeats, device)
        print(
            f"{name:38s} {1e3 * t_ours:9.2f} {1e3 * t_lib:11.2f} {t_ours / t_lib:7.2f} "
            f"{compare():9.2e}"
        )


if __name__ == "__main__":
    main()
