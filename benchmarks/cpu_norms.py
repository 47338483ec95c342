"""CPU benchmark: normlib.torch vs torch.nn (forward + backward) and normlib.numpy (forward).

Prints a table of median milliseconds and ratios. Targets: normlib.torch within 2x of torch.nn,
the NumPy reference within 3x of torch.nn's forward. The two sides of a ratio are timed in
alternation, and the ratio is the median over rounds of the per-round ratios: a shared or throttled
machine slows both sides of a round alike, so the ratio holds still while the milliseconds wander.
In a round each side first runs untimed for SETTLE_S seconds, then makes TIMED timed calls (their
median counts): by default torch's OpenMP threads spin for about 10 ms after each call (measured
here), and NumPy timed right after torch would share a core with them. So each side is measured as
it runs in a loop by itself.
With --steady-heap (Linux) glibc's malloc keeps the memory it is given back (`steady_heap`). By
default it returns large freed blocks to the system, and the next tensor of the same size
page-faults again, or not, depending on the heap's history: that moved single results here by up
to 4x (torch.nn's GroupNorm forward + backward: 1.3 or 5.8 ms). With a steady heap both sides are
timed computing, not faulting; the default heap is what a program normally gets.

normlib.torch runs its fused Numba kernels where numba is installed and its composite torch ops
otherwise (or with NORMLIB_CPU_KERNELS=0); the first line printed says which.

    python benchmarks/cpu_norms.py [--repeat 20] [--threads 2] [--steady-heap]
"""
import argparse
import ctypes
import ctypes.util
import statistics
import sys
import time

import numpy as np
import torch

import normlib.numpy as nn_
import normlib.numpy.core as nn_core
import normlib.torch as nt
import normlib.torch.core as nt_core

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


SETTLE_S, TIMED = 0.03, 3     # per side and round: seconds of untimed calls, then timed calls


def _ms(fn):
    """Median milliseconds of TIMED calls of fn, after at least SETTLE_S seconds of untimed ones."""
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < SETTLE_S:
        fn()
    times = []
    for _ in range(TIMED):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def paired_ms(ref, ours, repeat):
    """(median ms of ref, median ms of ours, quartiles (q1, median, q3) of the per-round ratios
    ours/ref)."""
    rounds = [(_ms(ref), _ms(ours)) for _ in range(repeat)]
    ratios = statistics.quantiles([o / r for r, o in rounds], n=4)
    return statistics.median(r for r, _ in rounds), statistics.median(o for _, o in rounds), ratios


def steady_heap():
    """Ask glibc's malloc never to trim the heap nor to map large blocks on their own (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3                  # mallopt parameters (malloc.h)
    return bool(libc.mallopt(m_trim_threshold, 2 ** 30) and libc.mallopt(m_mmap_threshold, 2 ** 30))


def cpu_path():
    """Which of normlib.torch's CPU paths the layers take here (core._cpu_kernels decides)."""
    kernels = nt_core._cpu_kernels(torch.ones(max(nt_core.MIN_NUMEL, nt_core.MIN_RUN)))
    if kernels is None:
        return "composite torch ops (numba missing, or NORMLIB_CPU_KERNELS=0)"
    return (f"fused Numba kernels (numba {kernels.numba.__version__}, as many threads as "
            f"torch)")


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
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="threads for torch and for the NumPy reference")
    parser.add_argument("--steady-heap", action="store_true",
                        help="keep freed memory in the heap: time computing, not page faults")
    args = parser.parse_args()
    heap = "steady heap" if args.steady_heap and steady_heap() else "default heap"
    torch.set_num_threads(args.threads)
    nn_core.THREADS = args.threads                 # the NumPy reference's threads too
    torch.manual_seed(0)
    print(f"normlib.torch on the CPU: {cpu_path()}")
    print(f"torch {torch.__version__}, numpy {np.__version__}, {args.threads} threads, "
          f"float32, median of {args.repeat} alternating rounds ({SETTLE_S * 1e3:.0f} ms untimed, "
          f"then {TIMED} timed calls a side), {heap}; ratio [quartiles]\n")
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
