"""Fused CPU kernels (Numba) for the core's two Functions: the same math, each pass over a group's
values while they are in cache.

The composite ops of `core.py` make each step of the formulas a separate sweep over the whole
tensor, and on a CPU the sweeps are the cost: LayerNorm and GroupNorm forward + backward took
1.8-2.4x torch.nn's own kernels on a 2-core CPU. These kernels walk one statistics group at a time
(a row of a LayerNorm, a (sample, group) of a GroupNorm, a channel of a BatchNorm), so the two or
three passes a group needs read data still in the core's cache. The formulas and names are
`core.py`'s:

    forward:   mean = Σx / n (0 without centering),  var = Σ(x - mean)² / n  (two passes, never
               E[x²] - E[x]²),  rstd = 1 / sqrt(var + eps),  y = (x - mean) * rstd * w + b
    backward:  dxhat = w * dy,  dx = rstd * (dxhat - <dxhat> - xhat * <dxhat * xhat>),
               dw = Σ dy * xhat,  db = Σ dy   (<.> a mean over the group; for given statistics,
               BatchNorm in eval, dx = rstd * dxhat)

Sums run in float64 whatever the array dtype (float32 or float64: the core converts half-precision
input to float32 first). NaN propagates: the fast-math flags allow reassociating sums (so LLVM
vectorizes them), not assuming finite values.

Threads: each kernel runs over a range [lo, hi) of its groups without the GIL (`nogil`), and
`_run` splits the groups into as many ranges as torch uses threads (`torch.get_num_threads()`):
the calling thread takes the first, threads of a small Python pool the others. Numba's own
parallel layers are not used: its OpenMP layer loads a second libgomp beside torch's, and after one
kernel `torch.set_num_threads(1)` no longer held (torch reported 2 threads again), which made
chapter 09's thousands of one-thread steps twice as slow; its workqueue layer took 170 us a call
and is not thread-safe. With one torch thread the kernels run in the caller, with no pool at all.
The pool is normlib's one (`normlib._threads`, shared with the NumPy reference); a process
forked after it started (DataLoader workers) makes a pool of its own.

The first call of each kernel compiles it (a few seconds), once per dtype; `cache=True` keeps the
machine code beside this file for later processes. `core.py` imports this module lazily
(`core._cpu_kernels`), only for inputs it can take: plain contiguous CPU tensors, outside
torch.compile and tracing.
"""
import numba
import numpy as np
import torch
from numba import njit

from .._threads import executor

__all__ = ["channel_forward", "channel_backward", "feature_forward", "feature_backward"]

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}   # not nnan/ninf: NaN must propagate
_jit = njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")

# A thread gets at least this many values: handing one less costs more than it saves (a second
# thread cost 0.1-0.3 ms a call here), which matters where torch uses dozens of threads
VALUES_PER_THREAD = 2 ** 16


def _threads():
    """How many threads a kernel call may use: as many as torch's intra-op threads."""
    return torch.get_num_threads()


def _parts(total, size):
    """How many threads share a call over `total` groups of an input of `size` values: `_threads()`,
    at most `total` and at most one a VALUES_PER_THREAD values."""
    return max(1, min(_threads(), total, size // VALUES_PER_THREAD))


def _run(kernel, total, *args):
    """kernel(*args, lo, hi) over the ranges of a split of [0, total) into one range a thread,
    `_parts` of them for args[0] (the input); returns when all are done."""
    parts = _parts(total, args[0].size)
    if parts == 1:
        kernel(*args, 0, total)
        return
    bounds = [total * i // parts for i in range(parts + 1)]
    pool = executor(parts - 1)
    futures = [pool.submit(kernel, *args, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    try:
        kernel(*args, bounds[0], bounds[1])
    finally:
        for future in futures:
            future.result()


@_jit
def _channel_forward(x, w, b, count, given, eps, y, mean, var, rstd, lo, hi):
    """x, y (N, G, C, S); w, b (G, C) or (0, 0); mean, var, rstd (K, G), over (C, S) of one sample
    (K = N) or over (N, C, S) (K = 1); `given`: mean and rstd are read, not computed."""
    n_all, groups, channels, size = x.shape
    k_all = mean.shape[0]
    for j in range(lo, hi):
        q, g = j // groups, j % groups
        n0, n1 = (0, n_all) if k_all == 1 else (q, q + 1)
        if given:
            mu, r = mean[q, g], rstd[q, g]
        else:
            total = 0.0
            for n in range(n0, n1):
                for c in range(channels):
                    for s in range(size):
                        total += x[n, g, c, s]
            mu = total / count
            total = 0.0
            for n in range(n0, n1):
                for c in range(channels):
                    for s in range(size):
                        xc = x[n, g, c, s] - mu
                        total += xc * xc
            r = 1.0 / np.sqrt(total / count + eps)
            mean[q, g], var[q, g], rstd[q, g] = mu, total / count, r
        for n in range(n0, n1):
            for c in range(channels):
                scale = r * w[g, c] if w.size else r
                shift = b[g, c] if b.size else 0.0
                for s in range(size):
                    y[n, g, c, s] = (x[n, g, c, s] - mu) * scale + shift


@_jit
def _channel_backward(x, dy, mean, rstd, w, count, dx, sum_dy, sum_dy_xhat, lo, hi):
    """dx (N, G, C, S) unless it has size 0, and per-sample sums over S: sum_dy, sum_dy_xhat
    (N, G, C). count = 0: the statistics were given (constants), else the values in a group."""
    n_all, groups, channels, size = x.shape
    k_all = mean.shape[0]
    for j in range(lo, hi):
        q, g = j // groups, j % groups
        n0, n1 = (0, n_all) if k_all == 1 else (q, q + 1)
        mu, r = mean[q, g], rstd[q, g]
        mean_dxhat, mean_dxhat_xhat = 0.0, 0.0
        for n in range(n0, n1):
            for c in range(channels):
                s_dy, s_dy_xc = 0.0, 0.0
                for s in range(size):
                    d = dy[n, g, c, s]
                    s_dy += d
                    s_dy_xc += d * (x[n, g, c, s] - mu)
                sum_dy[n, g, c], sum_dy_xhat[n, g, c] = s_dy, s_dy_xc * r
                wc = w[g, c] if w.size else 1.0
                mean_dxhat += wc * s_dy
                mean_dxhat_xhat += wc * s_dy_xc * r
        if dx.size == 0:
            continue
        if count > 0:
            mean_dxhat, mean_dxhat_xhat = mean_dxhat / count, mean_dxhat_xhat / count
        else:
            mean_dxhat, mean_dxhat_xhat = 0.0, 0.0
        for n in range(n0, n1):
            for c in range(channels):
                k = r * w[g, c] if w.size else r
                c0, c1 = r * mean_dxhat, r * r * mean_dxhat_xhat
                for s in range(size):
                    dx[n, g, c, s] = k * dy[n, g, c, s] - c0 - (x[n, g, c, s] - mu) * c1


@_jit
def _feature_forward(x, w, b, center, eps, y, mean, rstd, lo, hi):
    """x, y (M, D); w, b (D,) or (0,); mean (M,) (size 0 without centering), rstd (M,)."""
    rows, d = x.shape
    for i in range(lo, hi):
        mu = 0.0
        if center:
            for j in range(d):
                mu += x[i, j]
            mu /= d
            mean[i] = mu
        total = 0.0
        for j in range(d):
            xc = x[i, j] - mu
            total += xc * xc
        r = 1.0 / np.sqrt(total / d + eps)
        rstd[i] = r
        if w.size and b.size:
            for j in range(d):
                y[i, j] = (x[i, j] - mu) * r * w[j] + b[j]
        elif w.size:
            for j in range(d):
                y[i, j] = (x[i, j] - mu) * r * w[j]
        elif b.size:
            for j in range(d):
                y[i, j] = (x[i, j] - mu) * r + b[j]
        else:
            for j in range(d):
                y[i, j] = (x[i, j] - mu) * r


@_jit
def _feature_backward(x, dy, mean, rstd, w, dx, dw_part, db_part, lo, hi):
    """dx (M, D) unless it has size 0; dw_part, db_part (T, D) float64: the sums of dy * xhat and
    dy over the T slices of rows (one a thread), which the caller adds up."""
    rows, d = x.shape
    slices = dw_part.shape[0]
    for t in range(lo, hi):
        for j in range(d):
            dw_part[t, j], db_part[t, j] = 0.0, 0.0
        for i in range(t * rows // slices, (t + 1) * rows // slices):
            mu = mean[i] if mean.size else 0.0
            r = rstd[i]
            sum_dxhat, sum_dxhat_xhat = 0.0, 0.0
            for j in range(d):
                xhat = (x[i, j] - mu) * r
                dxhat = dy[i, j] * w[j] if w.size else dy[i, j]
                dw_part[t, j] += dy[i, j] * xhat
                db_part[t, j] += dy[i, j]
                sum_dxhat += dxhat
                sum_dxhat_xhat += dxhat * xhat
            if dx.size == 0:
                continue
            c1 = sum_dxhat_xhat / d
            c2 = sum_dxhat / d if mean.size else 0.0
            for j in range(d):
                xhat = (x[i, j] - mu) * r
                dxhat = dy[i, j] * w[j] if w.size else dy[i, j]
                dx[i, j] = (dxhat - xhat * c1 - c2) * r


def _arr(t, shape, dtype):
    """A NumPy view of CPU tensor t in `shape` (contiguous), or an empty array for None."""
    if t is None:
        return np.empty((0,) * len(shape), dtype)
    return t.detach().reshape(shape).contiguous().numpy()


def channel_forward(xv, w4, b4, over_batch, eps, given=None):
    """(y, mean, var, rstd) of `core._ChannelNorm`'s forward. xv (N, G, C/G, S) contiguous; w4, b4
    (1, G, C/G, 1) or None, in xv's dtype; statistics (K, G, 1, 1) with K = 1 if `over_batch` or
    `given` else N. `given` = (mean, rstd), each (1, G, 1, 1), normalizes instead (var None)."""
    xv = xv.detach()                  # NumPy views need tensors outside autograd
    n, groups, channels, size = xv.shape
    k = 1 if over_batch or given is not None else n
    if given is None:
        mean, var, rstd = (xv.new_empty((k, groups, 1, 1)) for _ in range(3))
    else:
        (mean, rstd), var = given, xv.new_empty((k, groups, 1, 1))
    y = torch.empty_like(xv)                                              # N, G, C/G, S
    dtype, pshape, sshape = xv.numpy().dtype, (groups, channels), (k, groups)
    _run(_channel_forward, k * groups, xv.numpy(), _arr(w4, pshape, dtype),
         _arr(b4, pshape, dtype), (n if over_batch else 1) * channels * size, given is not None,
         eps, y.numpy(), _arr(mean, sshape, dtype), var.numpy().reshape(sshape),
         _arr(rstd, sshape, dtype))
    return y, mean, (None if given is not None else var), rstd


def channel_backward(xv, dyv, mean, rstd, w4, batch_stats, over_batch, want_dx):
    """(dx or None, sum_dy_xhat, sum_dy) of `core._ChannelNorm`'s backward: xv, dyv
    (N, G, C/G, S) contiguous; mean, rstd (K, G, 1, 1); the sums over S and N, (1, G, C/G, 1)."""
    xv, dyv = xv.detach(), dyv.detach()
    n, groups, channels, size = xv.shape
    dtype, sshape = xv.numpy().dtype, (mean.shape[0], groups)
    dx = torch.empty_like(xv) if want_dx else xv.new_empty((0, 0, 0, 0))
    sum_dy, sum_dy_xhat = (xv.new_empty((n, groups, channels)) for _ in range(2))
    count = (n if over_batch else 1) * channels * size if batch_stats else 0
    _run(_channel_backward, sshape[0] * groups, xv.numpy(), dyv.numpy(), _arr(mean, sshape, dtype),
         _arr(rstd, sshape, dtype), _arr(w4, (groups, channels), dtype), count, dx.numpy(),
         sum_dy.numpy(), sum_dy_xhat.numpy())
    pshape = (1, groups, channels, 1)
    return (dx if want_dx else None), sum_dy_xhat.sum(0).reshape(pshape), \
        sum_dy.sum(0).reshape(pshape)


def feature_forward(x2, w, b, center, eps):
    """(y, mean or None, rstd) of `core._FeatureNorm`'s forward: x2 (M, D) contiguous, w, b (D,)
    or None in x2's dtype; mean and rstd (M, 1)."""
    x2 = x2.detach()
    rows, d = x2.shape
    dtype = x2.numpy().dtype
    y = torch.empty_like(x2)                                              # M, D
    mean = x2.new_empty((rows, 1)) if center else None
    rstd = x2.new_empty((rows, 1))
    _run(_feature_forward, rows, x2.numpy(), _arr(w, (d,), dtype), _arr(b, (d,), dtype), center,
         eps, y.numpy(), _arr(mean, (rows if center else 0,), dtype), rstd.numpy().reshape(rows))
    return y, mean, rstd


def feature_backward(x2, dy2, mean, rstd, w, wants):
    """(dx, dweight, dbias) of `core._FeatureNorm`'s backward, each None where `wants` (dx, dw, db)
    says so: x2, dy2 (M, D) contiguous; mean (or None) and rstd (M, 1); w (D,) or None."""
    x2, dy2 = x2.detach(), dy2.detach()
    rows, d = x2.shape
    dtype = x2.numpy().dtype
    dx = torch.empty_like(x2) if wants[0] else x2.new_empty((0, 0))
    slices = _parts(rows, x2.numel())                                    # one a thread
    dw_part, db_part = np.empty((slices, d)), np.empty((slices, d))      # float64 partial sums
    _run(_feature_backward, slices, x2.numpy(), dy2.numpy(),
         _arr(mean, (rows if mean is not None else 0,), dtype), _arr(rstd, (rows,), dtype),
         _arr(w, (d,), dtype), dx.numpy(), dw_part, db_part)
    dweight = torch.from_numpy(dw_part.sum(0)).to(x2.dtype) if wants[1] else None
    dbias = torch.from_numpy(db_part.sum(0)).to(x2.dtype) if wants[2] else None
    return (dx if wants[0] else None), dweight, dbias
