"""The one core for torch, as two autograd.Functions with hand-written backward passes.

Both compute xhat = (x - mean) * rstd over a set of axes, then y = weight * xhat + bias. They differ
only in where the parameters sit relative to the statistics, which decides the cheapest way to
evaluate the same formulas with composite ops (torch's own normalization kernels are the test
oracle, never the implementation):

- `channel_norm` (BatchNorm, InstanceNorm, GroupNorm): x viewed as (N, G, C/G, S). Statistics and
  parameters are constant over the spatial axis S, so each pass is x op (a small tensor that
  broadcasts: (N, G, 1, 1) statistics, (1, G, C/G, 1) parameters), in place where it can be.
- `feature_norm` (LayerNorm, RMSNorm): x viewed as (M, D). Statistics are per row, parameters per
  column. It saves x, mean and rstd (not xhat), recomputes xhat in the backward, and on the CPU
  walks blocks of rows of about BLOCK_BYTES: the dozen passes of the composite formulas then run on
  data still in the cache instead of streaming full tensors through memory each time (measured on
  a 2-core CPU: about 1.5x faster for (4096, 1024) forward + backward). Row sums weighted by the
  parameters are an elementwise product and a row sum: a (M, D) @ (D,) product is slower on the CPU.

On the CPU every composite op streams its operands through memory, so the code counts passes and
allocations: a fresh full-size tensor costs page faults on top of its pass. The variance is the
mean of (x - mean)² — two passes, never E[x²] - E[x]² — taken as ‖x - mean‖² / n with
`torch.linalg.vector_norm`, a plain reduction (sum of squares) that reads its input once without a
temporary. Statistics are float32 for float16/bfloat16 input (float64 for float64); y returns in the
input dtype.

Where numba is installed, both Functions hand a plain contiguous CPU input to fused kernels instead
(`numba_norm`, chosen by `_cpu_kernels`): the same formulas, each group's passes while its values
are in cache, on as many threads as torch uses. Measured on a 2-core CPU (benchmarks/cpu_norms.py),
forward + backward took 0.2-1.5x torch.nn's time, where the composite ops take 0.2-2.3x (GroupNorm
the slowest of both). The composite ops remain the path for everything else: CUDA tensors (where
Triton kernels take LayerNorm and RMSNorm), inputs under MIN_NUMEL values, channels-last input,
groups of fewer than MIN_RUN contiguous values, torch.compile and tracing, a process without numba,
or NORMLIB_CPU_KERNELS=0. Tests run both paths against torch.nn.

The hand-written backward passes work in place on fresh buffers and are not themselves recorded.
When a backward is recorded (`create_graph=True`: gradient penalties, Hessian-vector products) or
is handed a vmapped batch of dy (`is_grads_batched`, vectorized jacobians), each Function instead
rebuilds y from its inputs with plain differentiable ops and lets autograd differentiate that
(`_grads_with_graph`): slower, once per such call, and twice differentiable.
Under torch.func transforms (grad, vmap, jacrev, ...) and forward-mode AD, where an
autograd.Function would need rules of its own, the same plain ops replace the Functions
(`_composite_only`): the formulas are the same, autograd supplies every derivative.
"""
import os
from functools import partial
from math import prod

import torch
from torch.linalg import vector_norm

__all__ = ["compute_dtype", "channel_norm", "feature_norm"]

# CPU: the fused kernels of numba_norm when numba imports; NORMLIB_CPU_KERNELS=0 (or this flag,
# which tests switch) keeps the composite ops
CPU_KERNELS = os.environ.get("NORMLIB_CPU_KERNELS", "1") != "0"
_NUMBA_NORM = []                        # numba_norm once imported, or None where numba is missing
# The kernels take inputs of at least MIN_NUMEL values (smaller ones gain little, and handing half
# of a call to a second thread cost up to 0.3 ms here: LayerNorm (64, 256) took 2x longer), in
# groups of contiguous runs of at least MIN_RUN values (BatchNorm1d on (N, C) has runs of one,
# strided: the kernels' loops crawl there, 5x slower than the composite ops for (256, 100))
MIN_NUMEL = 2 ** 18
MIN_RUN = 16
BLOCK_BYTES = 2 ** 22   # CPU: rows are processed in blocks of about this many bytes (4 MiB)


def compute_dtype(dtype):
    """Statistics in float64 for float64 input, float32 otherwise (float16/bfloat16 included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _cpu_kernels(t, run=MIN_RUN):
    """normlib.torch.numba_norm, the fused CPU kernels, when `CPU_KERNELS` is on, numba imports,
    and t (the input viewed in the compute dtype) is a plain contiguous, non-empty float32/float64
    CPU tensor of at least MIN_NUMEL values, outside torch.compile and torch.jit tracing, whose
    groups are contiguous runs of at least MIN_RUN values (`run`); else None (composite ops)."""
    if not (CPU_KERNELS and run >= MIN_RUN and type(t) is torch.Tensor and t.is_cpu
            and t.layout == torch.strided and t.dtype in (torch.float32, torch.float64)
            and t.numel() >= max(1, MIN_NUMEL) and t.is_contiguous() and not t.is_neg()) \
            or _compiling() or torch.jit.is_tracing():
        return None
    if not _NUMBA_NORM:
        try:
            from . import numba_norm
        except ImportError:                  # numba is optional: composite ops then
            numba_norm = None
        _NUMBA_NORM.append(numba_norm)
    return _NUMBA_NORM[0]


def _meta(t):
    """(shape, dtype) of a parameter, or None."""
    return None if t is None else (t.shape, t.dtype)


def _param_grads(ctx, dweight, dbias, weight_meta, bias_meta):
    """Parameter gradients in the parameters' shapes and dtypes, None where not wanted."""
    want_dw, want_db = ctx.needs_input_grad[1:3]
    dweight = _as(dweight, weight_meta[1], weight_meta[0]) if weight_meta and want_dw else None
    dbias = _as(dbias, bias_meta[1], bias_meta[0]) if bias_meta and want_db else None
    return dweight, dbias


# torch >= 2.0; a torch without them has no transforms to detect
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
_legacy_batched = getattr(getattr(torch._C, "_functorch", None), "is_legacy_batchedtensor",
                          lambda t: False)   # the vmap of autograd.grad(is_grads_batched=True)
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _composite_only():
    """True inside a torch.func transform or a forward-mode AD level (torch.autograd.forward_ad):
    the layers then run as plain differentiable ops, which every transform supports."""
    return _functorch_active() or torch.autograd.forward_ad._current_level >= 0


def _composite_backward(dy):
    """True when a Function's backward must be made of plain differentiable ops: when it is being
    recorded (create_graph=True turns grad mode on inside backward), or when dy is a vmapped
    tensor (autograd.grad(is_grads_batched=True), vectorized jacobians, torch.func)."""
    return torch.is_grad_enabled() or _functorch_active() or \
        (not _compiling() and _legacy_batched(dy))     # torch.compile cannot trace the check


def _grads_with_graph(ctx, rebuild, inputs, dy):
    """Gradients of the first len(inputs) inputs of a Function for `_composite_backward`: y =
    rebuild(*inputs) is recomputed with composite differentiable ops and differentiated by
    autograd, which records that too when grad mode is on. The statistics are rebuilt from x, so
    second derivatives include their dependence on x."""
    record = torch.is_grad_enabled()
    needs = ctx.needs_input_grad[:len(inputs)]
    wanted = [t for t, need in zip(inputs, needs) if need]
    grads = iter(())
    if wanted:
        with torch.enable_grad():
            y = rebuild(*inputs)
        grads = iter(torch.autograd.grad(y, wanted, dy, create_graph=record, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)


def _mean_square(xc, dims):
    """Mean of xc² over `dims` (keepdim) in one read, without a full-size temporary."""
    count = prod(xc.shape[d] for d in dims)
    return vector_norm(xc, dim=dims, keepdim=True).square_().div_(count)


def _channel_forward(xv, w4, b4, over_batch, eps, stat_mean, stat_var):
    """`_ChannelNorm`'s forward by composite ops: (y, mean, rstd, out_mean, out_var); `stat_mean`
    and `stat_var` (1, C, 1, 1) normalize instead when given."""
    n, groups = xv.shape[0], xv.shape[1]
    if stat_mean is not None:                                         # given, per channel
        mean, var = stat_mean, stat_var                               # 1, C, 1, 1
        y = xv - mean                                                 # N, G, C/G, S
        # two tensors, not one returned twice: torch.compile's tracing fails on that
        out_mean, out_var = xv.new_empty(0), xv.new_empty(0)
    else:
        dims = (0, 2, 3) if over_batch else (2, 3)
        if xv.numel() == 0:
            # nan statistics out, as torch; finite ones kept for the backward, whose sums
            # over no values must stay 0 (0 * nan would be nan)
            mean = var = xv.new_zeros((1 if over_batch else n, groups, 1, 1))
            y = xv.clone(memory_format=torch.contiguous_format)
            out_mean, out_var = (torch.full_like(mean.view(-1, groups), float("nan"))
                                 for _ in range(2))
        else:
            mean = xv.mean(dim=dims, keepdim=True)                    # kn, G, 1, 1
            y = xv - mean                                             # x - mean, then y
            var = _mean_square(y, dims)                               # kn, G, 1, 1
            out_mean, out_var = mean.view(-1, groups), var.view(-1, groups)
    rstd = torch.rsqrt(var + eps)                                     # kn, G, 1, 1
    y.mul_(rstd if w4 is None else rstd * w4)
    if b4 is not None:
        y.add_(b4)
    return y, mean, rstd, out_mean, out_var


class _ChannelNorm(torch.autograd.Function):
    """x (N, C, *) viewed as (N, G, C/G, S); statistics over (C/G, S), and over N too if
    `over_batch`, or given per channel as `stat_mean`, `stat_var`. Returns (y, mean, var), the
    statistics of shape (N or 1, G) and not differentiable. Saves x, mean and rstd per group.

    Every small tensor stays in the 4-d view: statistics (N or 1, G, 1, 1), parameters
    (1, G, C/G, 1), so they broadcast against x without per-channel copies. On small inputs the
    dozens of tiny ops around the passes are the cost (each a few microseconds).
    """

    @staticmethod
    @torch.no_grad()   # as in eager; torch.export traces forward with grad on
    def forward(ctx, x, weight, bias, groups, over_batch, eps, stat_mean, stat_var):
        ctx.set_materialize_grads(False)             # no zero gradients made for mean and var
        cdt = compute_dtype(x.dtype)
        n, c = x.shape[0], x.shape[1]
        shape4 = (n, groups, c // groups, prod(x.shape[2:]))              # N, G, C/G, S
        xv = _as(x, cdt, shape4)
        pshape = (1,) + shape4[1:3] + (1,)                                # 1, G, C/G, 1
        w4, b4 = _as(weight, cdt, pshape), _as(bias, cdt, pshape)
        given = stat_mean is not None
        if given:                                                         # per channel
            stat_mean, stat_var = (_as(t, cdt, (1, c, 1, 1)) for t in (stat_mean, stat_var))
        cpu = _cpu_kernels(xv, run=shape4[2] * shape4[3])
        if cpu is not None:                                               # fused CPU kernels
            stats = (stat_mean, torch.rsqrt(stat_var + eps)) if given else None
            y, mean, var, rstd = cpu.channel_forward(xv, w4, b4, over_batch, eps, stats)
            out_mean, out_var = (xv.new_empty(0), xv.new_empty(0)) if given else \
                (mean.view(-1, groups), var.view(-1, groups))
        else:
            y, mean, rstd, out_mean, out_var = _channel_forward(xv, w4, b4, over_batch, eps,
                                                                stat_mean, stat_var)
        ctx.save_for_backward(xv, mean, rstd, w4, x, weight, bias)
        ctx.meta = (x.shape, x.dtype, over_batch, not given, _meta(weight), _meta(bias))
        ctx.rebuild = partial(_channel_y, groups=groups, over_batch=over_batch, eps=eps)
        ctx.mark_non_differentiable(out_mean, out_var)
        return _as(y, x.dtype, x.shape), out_mean, out_var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        xv, mean, rstd, w4, x, weight, bias = ctx.saved_tensors
        x_shape, x_dtype, over_batch, batch_stats, weight_meta, bias_meta = ctx.meta
        if dy is None:                       # y's gradient undefined (zero): so are the inputs'
            return None, None, None, None, None, None, None, None
        if _composite_backward(dy):          # create_graph=True, or batched gradients
            fixed = None if batch_stats else (mean, rstd)
            return _grads_with_graph(ctx, partial(ctx.rebuild, fixed=fixed), (x, weight, bias),
                                     dy) + (None,) * 5
        dyv = _as(dy, xv.dtype, xv.shape)                                 # N, G, C/G, S
        cpu = _cpu_kernels(xv, run=xv.shape[2] * xv.shape[3])
        if cpu is not None:                                               # fused CPU kernels
            dx, sum_dy_xhat, sum_dy = cpu.channel_backward(
                xv, dyv.contiguous(), mean, rstd, w4, batch_stats, over_batch,
                ctx.needs_input_grad[0])
            dweight, dbias = _param_grads(ctx, sum_dy_xhat, sum_dy, weight_meta, bias_meta)
            dx = None if dx is None else _as(dx, x_dtype, x_shape)
            return dx, dweight, dbias, None, None, None, None, None
        sum_dy = dyv.sum(dim=3, keepdim=True)                             # N, G, C/G, 1
        buf = xv - mean                      # N, G, C/G, S: x - mean, then dy * (x - mean), then dx
        sum_dy_xhat = buf.mul_(dyv).sum(dim=3, keepdim=True).mul_(rstd)   # N, G, C/G, 1
        dweight, dbias = _param_grads(ctx, sum_dy_xhat.sum(0), sum_dy.sum(0), weight_meta,
                                      bias_meta)
        if not ctx.needs_input_grad[0]:
            return None, dweight, dbias, None, None, None, None, None
        k = rstd if w4 is None else rstd * w4                             # kn, G, C/G, 1
        if not batch_stats:                                               # statistics are constants
            dx = torch.mul(dyv, k, out=buf)
        else:
            # dx = rstd * (dxhat - <dxhat> - xhat * <dxhat * xhat>), dxhat = w * dy, <.> the mean
            # over a group: w-weighted sums of the per-channel partial sums. x - mean is
            # recomputed into the one buffer: an extra pass costs less than a second full buffer.
            dims = (0, 2) if over_batch else (2,)
            count = prod(xv.shape[2:]) * (xv.shape[0] if over_batch else 1)
            if w4 is not None:                                            # w-weighted, in place
                sum_dy.mul_(w4)
                sum_dy_xhat.mul_(w4)
            mean_dxhat = sum_dy.sum(dim=dims, keepdim=True).div_(count)                 # kn, G
            mean_dxhat_xhat = sum_dy_xhat.sum(dim=dims, keepdim=True).div_(count)
            dx = torch.sub(xv, mean, out=buf).mul_(-mean_dxhat_xhat * rstd * rstd) \
                .sub_(mean_dxhat * rstd).addcmul_(dyv, k)
        return _as(dx, x_dtype, x_shape), dweight, dbias, None, None, None, None, None


def _channel_composite(x, weight, bias, groups, over_batch, eps, fixed):
    """(y, mean, var) of `_ChannelNorm` by plain differentiable ops; `fixed` is the given
    (mean, rstd), constants of shape (1, C, 1, 1), or None for batch statistics, whose mean and
    var come back as (N or 1, G) (empty for given ones)."""
    cdt = compute_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    xv = x.to(cdt).reshape(n, groups, c // groups, prod(x.shape[2:]))   # N, G, C/G, S
    if fixed is None:
        dims = (0, 2, 3) if over_batch else (2, 3)
        mean = xv.mean(dim=dims, keepdim=True)                            # kn, G, 1, 1
        xc = xv - mean
        var = xc.square().mean(dim=dims, keepdim=True)                    # kn, G, 1, 1
        y = xc * torch.rsqrt(var + eps)
        mean, var = mean.detach().view(-1, groups), var.detach().view(-1, groups)
    else:
        y = (xv - fixed[0]) * fixed[1]
        mean = var = xv.new_empty(0)
    pshape = (1, groups, c // groups, 1)
    if weight is not None:
        y = y * weight.to(cdt).reshape(pshape)
    if bias is not None:
        y = y + bias.to(cdt).reshape(pshape)
    return y.to(x.dtype).reshape(x.shape), mean, var


def _channel_y(x, weight, bias, *, groups, over_batch, eps, fixed):
    """y of `_ChannelNorm` by plain differentiable ops, for `_grads_with_graph`."""
    return _channel_composite(x, weight, bias, groups, over_batch, eps, fixed)[0]


def _feature_y(x, weight, bias, *, d, eps, center):
    """y of `_FeatureNorm` (and of the Triton kernels) by plain differentiable ops, for
    `_grads_with_graph`."""
    cdt = compute_dtype(x.dtype)
    x2 = x.to(cdt).reshape(_rows_shape(x, d))                            # M, D
    xc = x2 - x2.mean(dim=1, keepdim=True) if center else x2
    y = xc * torch.rsqrt(xc.square().mean(dim=1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(cdt).reshape(d)
    if bias is not None:
        y = y + bias.to(cdt).reshape(d)
    return y.to(x.dtype).reshape(x.shape)


def _as(t, dtype, shape):
    """t in `dtype` and `shape`, skipping the calls that would change nothing (None stays None):
    small tensors pay per call, and LayerNorm runs on many small ones."""
    if t is None:
        return None
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if t.shape == shape else t.reshape(shape)


def _rows_shape(x, d):
    """(M, D): x's shape as rows of d values (d = 0: x is empty, and so is the view)."""
    return (x.numel() // d if d else 0, d)


def _one_block(x2):
    """True when x2 (M, D) is processed whole: off the CPU, or small enough to stay in cache."""
    return not x2.is_cpu or x2.nbytes <= BLOCK_BYTES


def _row_blocks(x2):
    """Slices of x2's rows (M, D) small enough that a block's temporaries stay in a CPU cache:
    the several passes a composite formula makes then hit the cache, not main memory."""
    m, d = x2.shape
    rows = max(1, BLOCK_BYTES // max(1, d * x2.element_size()))
    return [slice(start, min(start + rows, m)) for start in range(0, m, rows)]


def _normalize_rows(x, w, b, eps, center, out=None):
    """(y, mean, rstd) for a block of rows x (rows, D): mean and rstd (rows, 1), mean None when
    not `center`; y written into `out` when given."""
    mean = x.mean(dim=1, keepdim=True) if center else None               # rows, 1
    if center:
        y = torch.sub(x, mean, out=out)                                   # x - mean
        rstd = torch.rsqrt(_mean_square(y, (1,)).add_(eps))               # rows, 1
        y.mul_(rstd)                                                      # xhat
    else:
        rstd = torch.rsqrt(_mean_square(x, (1,)).add_(eps))
        y = torch.mul(x, rstd, out=out)
    if w is not None and b is not None:
        torch.addcmul(b, y, w, out=y)
    elif w is not None:
        y.mul_(w)
    elif b is not None:
        y.add_(b)
    return y, mean, rstd


def _backward_rows(x, dy, mean, rstd, w, wants, out=None, scratch=None):
    """(dx, dweight, dbias) for a block of rows, each None where `wants` (dx, dw, db) says so;
    dx written into `out` when given. xhat is recomputed into `scratch` (a fresh temporary when
    None): the blocks share one buffer instead of each allocating, and page-faulting, its own."""
    want_dx, want_dw, want_db = wants
    xhat = torch.sub(x, mean, out=scratch).mul_(rstd) if mean is not None \
        else torch.mul(x, rstd, out=scratch)                              # rows, D
    dbias = dy.sum(dim=0) if want_db else None
    dx = torch.mul(dy, xhat, out=out)                                     # dy * xhat, then dx
    dweight = dx.sum(dim=0) if want_dw else None
    if not want_dx:
        return None, dweight, dbias
    # dx = rstd * (dxhat - <dxhat> - xhat * <dxhat * xhat>), dxhat = dy * w, <.> row means
    # (row sums with the 1/D folded into the update: a mean costs twice a sum on small rows)
    inv_d = 1.0 / max(1, x.shape[1])                                      # D = 0: empty rows
    sum_dxhat_xhat = (dx if w is None else dx.mul_(w)).sum(dim=1, keepdim=True)
    if w is None:
        dx.copy_(dy)
    else:
        torch.mul(dy, w, out=dx)                                          # dxhat
    if mean is not None:
        dx.sub_(dx.sum(dim=1, keepdim=True), alpha=inv_d)                 # - <dxhat>
    dx.addcmul_(xhat, sum_dxhat_xhat, value=-inv_d).mul_(rstd)
    return dx, dweight, dbias


class _FeatureNorm(torch.autograd.Function):
    """x (*, *normalized_shape) viewed as (M, D); statistics per row (mean skipped when not
    `center`: RMSNorm); weight and bias of D values. Saves x, mean and rstd (M, 1); the backward
    recomputes xhat. On the CPU both passes walk blocks of rows (`_row_blocks`).
    """

    @staticmethod
    @torch.no_grad()   # as in eager; torch.export traces forward with grad on
    def forward(ctx, x, weight, bias, d, eps, center):
        cdt = compute_dtype(x.dtype)
        x2 = _as(x, cdt, _rows_shape(x, d))                               # M, D
        w, b = _as(weight, cdt, (d,)), _as(bias, cdt, (d,))
        cpu = _cpu_kernels(x2, run=d)
        if cpu is not None:                                               # fused CPU kernels
            y, mean, rstd = cpu.feature_forward(x2, w, b, center, eps)
        elif _one_block(x2):
            y, mean, rstd = _normalize_rows(x2, w, b, eps, center)
        else:
            y = torch.empty_like(x2, memory_format=torch.contiguous_format)  # M, D
            parts = [_normalize_rows(x2[rows], w, b, eps, center, out=y[rows])
                     for rows in _row_blocks(x2)]
            mean = torch.cat([p[1] for p in parts]) if center else None  # M, 1
            rstd = torch.cat([p[2] for p in parts])                      # M, 1
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.meta = (d, center, _meta(weight), _meta(bias))
        ctx.rebuild = partial(_feature_y, d=d, eps=eps, center=center)
        return _as(y, x.dtype, x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        d, center, weight_meta, bias_meta = ctx.meta
        if _composite_backward(dy):          # create_graph=True, or batched gradients
            return _grads_with_graph(ctx, ctx.rebuild, (x, weight, bias), dy) + (None,) * 3
        shape2 = _rows_shape(x, d)
        x2, dy2 = _as(x, rstd.dtype, shape2), _as(dy, rstd.dtype, shape2)  # M, D
        w = _as(weight, rstd.dtype, (d,))
        want_dx, want_dw, want_db = ctx.needs_input_grad[:3]
        wants = (want_dx, want_dw and w is not None, want_db and bias_meta is not None)
        cpu = _cpu_kernels(x2, run=d)
        if cpu is not None:                                               # fused CPU kernels
            dx, dweight, dbias = cpu.feature_backward(x2, dy2.contiguous(), mean, rstd, w, wants)
        elif _one_block(x2):
            dx, dweight, dbias = _backward_rows(x2, dy2, mean, rstd, w, wants)
        else:
            dx = torch.empty_like(x2, memory_format=torch.contiguous_format) if want_dx else None
            blocks = _row_blocks(x2)
            scratch = x2.new_empty((blocks[0].stop, d))                   # one block's rows, D
            parts = [_backward_rows(x2[rows], dy2[rows], None if mean is None else mean[rows],
                                    rstd[rows], w, wants, out=None if dx is None else dx[rows],
                                    scratch=scratch[:rows.stop - rows.start])
                     for rows in blocks]
            dweight = sum(p[1] for p in parts) if wants[1] else None      # D
            dbias = sum(p[2] for p in parts) if wants[2] else None        # D
        dweight, dbias = _param_grads(ctx, dweight, dbias, weight_meta, bias_meta)
        dx = _as(dx, x.dtype, x.shape) if want_dx else None
        return dx, dweight, dbias, None, None, None


def channel_norm(x, weight, bias, groups, over_batch, eps, stats=None):
    """(y, mean, var) for BatchNorm (groups=C, over_batch), InstanceNorm (groups=C) and
    GroupNorm; `stats` = (mean, var) per channel normalizes with given statistics instead
    (passed to the Function as two tensors: torch.jit.trace cannot record a tuple argument)."""
    mean, var = (None, None) if stats is None else stats
    if _composite_only():
        fixed = None
        if stats is not None:
            cdt, given = compute_dtype(x.dtype), (1, x.shape[1], 1, 1)
            fixed = (mean.to(cdt).reshape(given), torch.rsqrt(var.to(cdt).reshape(given) + eps))
        return _channel_composite(x, weight, bias, int(groups), over_batch, float(eps), fixed)
    return _ChannelNorm.apply(x, weight, bias, int(groups), over_batch, float(eps), mean, var)


def feature_norm(x, weight, bias, d, eps, center=True):
    """y for LayerNorm (center) and RMSNorm (not center) over the last axes, d values a row."""
    if _composite_only():
        return _feature_y(x, weight, bias, d=d, eps=float(eps), center=center)
    return _FeatureNorm.apply(x, weight, bias, d, float(eps), center)
