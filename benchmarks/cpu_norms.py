"""CPU benchmark: normlib.torch vs torch.nn (forward + backward) and normlib.numpy (forward).

Prints a table of median milliseconds and ratios. Targets: normlib.torch within 2x of torch.nn,
the NumPy reference within 3x of torch.nn's forward.

    python benchmarks/cpu_norms.py [--repeat 20] [--threads 2]
"""
import argparse
import statistics
import time

import numpy as np
import torch

import normlib.numpy as nn_
import normlib.torch as nt

CASES = [  # name, input shape, module factory (given nt or torch.nn), NumPy forward
    ("BatchNorm2d", (32, 64, 32, 32), lambda m: m.BatchNorm2d(64),
     lambda x, w, b: nn_.batch_norm(x, w, b)),
    ("LayerNorm", (4096, 1024), lambda m: m.LayerNorm(1024),
     lambda x, w, b: nn_.layer_norm(x, (1024,), w, b)),
    ("GroupNorm(8)", (32, 64, 32, 32), lambda m: m.GroupNorm(8, 64),
     lambda x, w, b: nn_.group_norm(x, 8, w, b)),
    ("RMSNorm", (4096, 1024), lambda m: m.RMSNorm(1024),
     lambda x, w, b: nn_.rms_norm(x, (1024,), w)),
]


def median_ms(fn, repeat, warmup=3):
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def fwd_bwd(module, x, dy):
    """One forward and backward pass; the closure the timer calls."""
    def run():
        x.grad = None
        module(x).backward(dy)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {args.threads} threads, "
          f"float32, median of {args.repeat}\n")
    head = (f"{'layer':<13} {'shape':<18} {'torch.nn f+b':>12} {'normlib f+b':>12} {'ratio':>6} "
            f"{'torch.nn fwd':>12} {'numpy fwd':>10} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for name, shape, make, np_fwd in CASES:
        x = torch.randn(shape, requires_grad=True)
        dy = torch.randn(shape)
        ref, ours = make(torch.nn), make(nt)
        t_ref = median_ms(fwd_bwd(ref, x, dy), args.repeat)
        t_ours = median_ms(fwd_bwd(ours, x, dy), args.repeat)
        with torch.no_grad():
            t_ref_fwd = median_ms(lambda: ref(x), args.repeat)
        xn = x.detach().numpy()
        w, b = np.ones(ref.weight.shape, np.float32), np.zeros(ref.weight.shape, np.float32)
        t_np = median_ms(lambda: np_fwd(xn, w, b), args.repeat)
        print(f"{name:<13} {str(shape):<18} {t_ref:>10.2f}ms {t_ours:>10.2f}ms {t_ours / t_ref:>6.2f} "
              f"{t_ref_fwd:>10.2f}ms {t_np:>8.2f}ms {t_np / t_ref_fwd:>6.2f}")


if __name__ == "__main__":
    main()
