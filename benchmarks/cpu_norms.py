"""CPU benchmark: normlib.torch vs torch.nn (forward + backward) and normlib.numpy (forward).

Prints a table of median milliseconds and ratios. Targets: normlib.torch within 2x of torch.nn,
the NumPy reference within 3x of torch.nn's forward. The two sides of a ratio are timed in
alternation, one call each per round, and the ratio is the median over rounds of the per-round
ratios: a shared or throttled machine slows both sides of a round alike, so the ratio holds still
while the milliseconds wander.

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


def _ms(fn):
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def paired_ms(ref, ours, repeat, warmup=3):
    """(median ms of ref, median ms of ours, quartiles (q1, median, q3) of the per-round ratios
    ours/ref)."""
    for _ in range(warmup):
        ref()
        ours()
    rounds = [(_ms(ref), _ms(ours)) for _ in range(repeat)]
    ratios = statistics.quantiles([o / r for r, o in rounds], n=4)
    return statistics.median(r for r, _ in rounds), statistics.median(o for _, o in rounds), ratios


def _ratio(q):
    """A ratio's median and, in brackets, its interquartile range over the rounds."""
    return f"{q[1]:.2f} [{q[0]:.1f}-{q[2]:.1f}]"


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
          f"float32, median of {args.repeat} alternating rounds; ratio [quartiles]\n")
    head = (f"{'layer':<13} {'shape':<18} {'torch.nn f+b':>12} {'normlib f+b':>12} "
            f"{'ratio':>14} {'torch.nn fwd':>12} {'numpy fwd':>10} {'ratio':>14}")
    print(head)
    print("-" * len(head))
    for name, shape, make, np_fwd in CASES:
        x = torch.randn(shape, requires_grad=True)
        dy = torch.randn(shape)
        ref, ours = make(torch.nn), make(nt)
        t_ref, t_ours, ratio = paired_ms(fwd_bwd(ref, x, dy), fwd_bwd(ours, x, dy), args.repeat)
        xn = x.detach().numpy()
        w, b = np.ones(ref.weight.shape, np.float32), np.zeros(ref.weight.shape, np.float32)

        def ref_fwd():
            with torch.no_grad():
                ref(x)
        t_ref_fwd, t_np, np_ratio = paired_ms(ref_fwd, lambda: np_fwd(xn, w, b), args.repeat)
        print(f"{name:<13} {str(shape):<18} {t_ref:>10.2f}ms {t_ours:>10.2f}ms "
              f"{_ratio(ratio):>14} {t_ref_fwd:>10.2f}ms {t_np:>8.2f}ms {_ratio(np_ratio):>14}")


if __name__ == "__main__":
    main()
