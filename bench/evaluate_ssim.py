"""Benchmark: local-SSIM map of mtlgen.evaluate.metrics.ssim_map against MONAI's.

Times ``ssim_map`` (separable Gaussian filter) and MONAI's ``compute_ssim_and_cs`` (dense 3-D
convolution), measured in the same run on the same pair of volumes of the model grid
(default 56 x 64 x 56), and prints both, their ratio and the largest difference between the maps.
On a GPU MONAI's convolution runs on CUDA; ``ssim_map`` always runs on the CPU (scipy).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from monai.metrics.regression import compute_ssim_and_cs

from mtlgen.evaluate.metrics import ssim_map


def _best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=[56, 64, 56], help="volume shape")
    parser.add_argument("--window", type=int, default=7, help="SSIM window (odd)")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    truth = rng.random(args.shape).astype(np.float32)
    pred = (truth + 0.1 * rng.standard_normal(args.shape)).astype(np.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.from_numpy(pred)[None, None].to(device)
    y = torch.from_numpy(truth)[None, None].to(device)
    kernel = [args.window] * 3

    def monai_map():
        out = compute_ssim_and_cs(x, y, 3, kernel, [1.5] * 3, data_range=1.0)[0]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    ours = _best_of(args.repeats, lambda: ssim_map(pred, truth, 1.0, args.window))
    theirs = _best_of(args.repeats, monai_map)
    half = args.window // 2
    inner = ssim_map(pred, truth, 1.0, args.window)[half:-half, half:-half, half:-half]
    diff = float(np.abs(inner - monai_map()[0, 0].cpu().numpy()).max())
    print(
        f"volume {tuple(args.shape)}, window {args.window}, torch threads {torch.get_num_threads()}"
    )
    print(f"mtlgen ssim_map (separable, CPU): {ours * 1e3:.1f} ms")
    print(f"MONAI compute_ssim_and_cs ({device}): {theirs * 1e3:.1f} ms")
    print(f"speed-up mtlgen / MONAI: {theirs / ours:.1f}x; max |difference| {diff:.1e}")


if __name__ == "__main__":
    main()
