"""Fused Triton kernels for LayerNorm and RMSNorm (forward and backward), used for CUDA tensors.

The math is the core's (see `core.py`), on x viewed as (M, N) rows:

    forward:   mean = Σx / N (0 for RMSNorm),  var = Σ(x - mean)² / N,  rstd = 1 / sqrt(var + eps)
               xhat = (x - mean) * rstd,       y = xhat * w + b
    backward:  wdy = w * dy,  c1 = Σ(xhat * wdy) / N,  c2 = Σ wdy / N (0 for RMSNorm)
               dx = (wdy - (xhat * c1 + c2)) * rstd
               dw = Σ_rows dy * xhat,  db = Σ_rows dy

The forward runs one program per row. It reads x once when a row fits on chip (MAX_FUSED_BYTES) and
keeps it in registers; wider rows are streamed in CHUNK_N-wide chunks (mean, then variance, then
output: three reads that L2 mostly serves). Mean and rstd are stored in float32 for the backward,
which recomputes xhat instead of reading it.

The backward has two plans, because dw and db sum over rows while dx needs sums over a row:
- narrow rows (N <= FUSED_BACKWARD_N): one persistent kernel, a few programs per SM, each walking
  tiles of BLOCK_M rows. It writes dx and keeps float32 partial sums of dw and db in registers, one
  per program, which a small torch reduction over programs finishes. x and dy are read once.
- wide rows: whole-row accumulators would not fit in registers (they spill to memory and the kernel
  crawls), so dx comes from a kernel with one program per row and no accumulators, and dw, db from a
  second kernel that tiles the columns and sums down the rows. x and dy are read twice, all streams.
Statistics and sums are float32 for every input dtype. A recorded backward (create_graph=True)
or one handed a vmapped dy runs the core's composite ops instead (`core._grads_with_graph`), so
second derivatives and batched gradients work here too. Importing this module imports triton:
callers import it lazily (normlib.torch.functional does).
"""
from functools import partial

import torch
import triton
import triton.language as tl

from .core import _composite_backward, _composite_only, _feature_y, _grads_with_graph

MAX_FUSED_BYTES = 65536   # rows up to this size (in the input dtype) stay in registers
CHUNK_N = 4096            # wider rows are streamed in chunks of this many columns
FUSED_BACKWARD_N = 4096   # rows up to this width get the one-kernel backward


@triton.jit
def _forward_kernel(X, Y, W, B, Mean, Rstd,   # pointers: x, y (M, N); w, b (N); mean, rstd (M)
                    stride_x, stride_y,        # row strides of x and y, in elements
                    N, eps,                    # row width, epsilon
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, CENTER: tl.constexpr,
                    BLOCK_N: tl.constexpr, ONE_BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x
    Y += row * stride_y
    if ONE_BLOCK:                                                   # the row lives in registers
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / N if CENTER else 0.0
        xc = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
        y = xc * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)
    else:                                                           # wide rows, CHUNK_N at a time
        mean = 0.0
        if CENTER:
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                acc += tl.load(X + cols, mask=cols < N, other=0.0).to(tl.float32)
            mean = tl.sum(acc, axis=0) / N
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            x = tl.load(X + cols, mask=cols < N, other=0.0).to(tl.float32)
            xc = tl.where(cols < N, x - mean, 0.0)
            acc += xc * xc
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
            y = (x - mean) * rstd
            if HAS_W:
                y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_B:
                y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _backward_kernel(X, DY, DX, W, Mean, Rstd,   # pointers: x, dy, dx (M, N); w (N); mean, rstd (M)
                     DW, DB,                      # float32 partial sums (programs, N) of dw, db
                     stride_x, stride_dy, stride_dx,
                     M, N,
                     HAS_W: tl.constexpr, CENTER: tl.constexpr,
                     HAS_DW: tl.constexpr, HAS_DB: tl.constexpr,   # accumulate dw, db here
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ONE_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if ONE_BLOCK:
        cols = tl.arange(0, BLOCK_N)[None, :]                                     # 1, BLOCK_N
        w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32) if HAS_W else 1.0
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(pid * BLOCK_M, M, tl.num_programs(0) * BLOCK_M):   # tiles of BLOCK_M rows
        rows = start + tl.arange(0, BLOCK_M).to(tl.int64)                      # BLOCK_M
        mean = tl.load(Mean + rows, mask=rows < M, other=0.0)[:, None]          # BLOCK_M, 1
        rstd = tl.load(Rstd + rows, mask=rows < M, other=0.0)[:, None]
        rows = rows[:, None]
        if ONE_BLOCK:                                   # the rows live in registers
            mask = (rows < M) & (cols < N)                                        # BLOCK_M, BLOCK_N
            x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + rows * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            xhat = (x - mean) * rstd                    # masked lanes: dy = 0 cancels them
            wdy = w * dy
            c1 = tl.sum(xhat * wdy, axis=1)[:, None] / N                         # BLOCK_M, 1
            c2 = tl.sum(wdy, axis=1)[:, None] / N if CENTER else 0.0
            dx = (wdy - (xhat * c1 + c2)) * rstd
            tl.store(DX + rows * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_DW:
                dw += dy * xhat
            if HAS_DB:
                db += dy
        else:                                           # wide rows: the sums, then dx, by chunks
            sum1 = tl.zeros([BLOCK_M], dtype=tl.float32)
            sum2 = tl.zeros([BLOCK_M], dtype=tl.float32)
            for col in range(0, N, BLOCK_N):
                cols = col + tl.arange(0, BLOCK_N)[None, :]
                mask = (rows < M) & (cols < N)
                x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + rows * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32) if HAS_W else 1.0
                sum1 += tl.sum((x - mean) * rstd * w * dy, axis=1)
                sum2 += tl.sum(w * dy, axis=1)
            c1 = sum1[:, None] / N
            c2 = sum2[:, None] / N if CENTER else 0.0
            for col in range(0, N, BLOCK_N):
                cols = col + tl.arange(0, BLOCK_N)[None, :]
                mask = (rows < M) & (cols < N)
                x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + rows * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32) if HAS_W else 1.0
                dx = (w * dy - ((x - mean) * rstd * c1 + c2)) * rstd
                tl.store(DX + rows * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_DW:
        cols = tl.arange(0, BLOCK_N)
        tl.store(DW + pid * N + cols, tl.sum(dw, axis=0), mask=cols < N)
    if HAS_DB:
        cols = tl.arange(0, BLOCK_N)
        tl.store(DB + pid * N + cols, tl.sum(db, axis=0), mask=cols < N)


@triton.jit
def _dw_db_kernel(X, DY, Mean, Rstd,   # pointers: x, dy (M, N); mean, rstd (M)
                  DW, DB,              # float32 partial sums (groups, N) of dw, db
                  stride_x, stride_dy,
                  M, N,
                  HAS_DW: tl.constexpr, HAS_DB: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)     # BLOCK_N: this program's columns
    group = tl.program_id(1)                                      # ... summed over this row group
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(group * BLOCK_M, M, tl.num_programs(1) * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M).to(tl.int64)                        # BLOCK_M
        mask = (rows[:, None] < M) & (cols[None, :] < N)                          # BLOCK_M, BLOCK_N
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        if HAS_DW:
            x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
            mean = tl.load(Mean + rows, mask=rows < M, other=0.0)[:, None]
            rstd = tl.load(Rstd + rows, mask=rows < M, other=0.0)[:, None]
            dw += dy * (x.to(tl.float32) - mean) * rstd                            # dy * xhat
        if HAS_DB:
            db += dy
    if HAS_DW:
        tl.store(DW + group * N + cols, tl.sum(dw, axis=0), mask=cols < N)
    if HAS_DB:
        tl.store(DB + group * N + cols, tl.sum(db, axis=0), mask=cols < N)


def _block(n, element_size):
    """(BLOCK_N, ONE_BLOCK): the whole row when it fits in MAX_FUSED_BYTES, else CHUNK_N chunks."""
    full = triton.next_power_of_2(max(n, 1))
    if full * element_size <= MAX_FUSED_BYTES:
        return full, True
    return min(CHUNK_N, full), False


def _warps(block_size):
    """More warps for bigger blocks, as Triton's tutorial does."""
    return min(max(block_size // 256, 1), 16)


def _sms(x):
    """Streaming multiprocessors on x's GPU; 1 in the interpreter."""
    return torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1


def _fused_backward_grid(x, m, block_n):
    """(BLOCK_M, num_warps, programs) of the one-kernel backward: tiles of 4096 values.

    Narrow rows are stacked BLOCK_M to a tile, so each step of a program has 4096 values in flight,
    with few warps (32 values a thread): fewer threads meet in each row sum. About 4 programs per
    SM; each writes one row of dw and db partial sums."""
    block_m = max(1, 4096 // block_n)
    programs = min(triton.cdiv(m, block_m), 4 * _sms(x))
    return block_m, max(4, block_n // 512), programs


DW_BLOCK_M, DW_BLOCK_N, DW_WARPS = 32, 128, 4   # _dw_db_kernel's tile: 32 rows of 128 columns


def _dw_db_groups(x, m, n):
    """Row groups of _dw_db_kernel: about 8 programs per SM in all."""
    return min(triton.cdiv(m, DW_BLOCK_M), max(1, 8 * _sms(x) // triton.cdiv(n, DW_BLOCK_N)))


class _TritonNorm(torch.autograd.Function):
    """LayerNorm (center=True) or RMSNorm (center=False) over the last dim of x viewed as (M, N)."""

    @staticmethod
    def forward(ctx, x, weight_in, bias_in, n, eps, center):
        weight = None if weight_in is None else weight_in.contiguous()
        bias = None if bias_in is None else bias_in.contiguous()
        x2 = x.reshape(-1, n)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        m = x2.shape[0]
        y = torch.empty_like(x2, memory_format=torch.contiguous_format)
        mean = torch.empty(m, dtype=torch.float32, device=x.device)
        rstd = torch.empty(m, dtype=torch.float32, device=x.device)
        block_n, one_block = _block(n, x2.element_size())
        if m > 0:
            _forward_kernel[(m,)](
                x2, y, weight if weight is not None else x2, bias if bias is not None else x2,
                mean, rstd, x2.stride(0), y.stride(0), n, eps,
                HAS_W=weight is not None, HAS_B=bias is not None, CENTER=center,
                BLOCK_N=block_n, ONE_BLOCK=one_block, num_warps=_warps(block_n))
        ctx.save_for_backward(x2, weight, mean, rstd, x, weight_in, bias_in)
        ctx.meta = (x.shape, n, center, None if bias is None else (bias.shape, bias.dtype))
        ctx.rebuild = partial(_feature_y, d=n, eps=eps, center=center)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd, x, weight_in, bias_in = ctx.saved_tensors
        x_shape, n, center, bias_meta = ctx.meta
        if _composite_backward(dy):   # create_graph=True or batched grads: composite ops
            return _grads_with_graph(ctx, ctx.rebuild, (x, weight_in, bias_in), dy) + (None,) * 3
        dy2 = dy.reshape(-1, n)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        m = x2.shape[0]
        dx = torch.empty_like(x2, memory_format=torch.contiguous_format)
        has_dw = weight is not None and ctx.needs_input_grad[1]
        has_db = bias_meta is not None and ctx.needs_input_grad[2]
        block_n, one_block = _block(n, x2.element_size())
        fused = one_block and n <= FUSED_BACKWARD_N
        if fused:    # dx, dw, db in one kernel, dw and db as partial sums per program
            block_m, warps, programs = _fused_backward_grid(x2, m, block_n)
            parts = programs
        else:        # dx with one program per row, then dw, db by _dw_db_kernel
            block_m, warps, programs = 1, _warps(block_n), m
            parts = _dw_db_groups(x2, m, n)
        dw_part = torch.empty(parts, n, dtype=torch.float32, device=x2.device) if has_dw else dx
        db_part = torch.empty(parts, n, dtype=torch.float32, device=x2.device) if has_db else dx
        if m > 0:
            _backward_kernel[(programs,)](
                x2, dy2, dx, weight if weight is not None else x2, mean, rstd, dw_part, db_part,
                x2.stride(0), dy2.stride(0), dx.stride(0), m, n,
                HAS_W=weight is not None, CENTER=center, HAS_DW=fused and has_dw,
                HAS_DB=fused and has_db, BLOCK_M=block_m, BLOCK_N=block_n, ONE_BLOCK=one_block,
                num_warps=warps)
            if not fused and (has_dw or has_db):
                _dw_db_kernel[(triton.cdiv(n, DW_BLOCK_N), parts)](
                    x2, dy2, mean, rstd, dw_part, db_part, x2.stride(0), dy2.stride(0), m, n,
                    HAS_DW=has_dw, HAS_DB=has_db, BLOCK_M=DW_BLOCK_M, BLOCK_N=DW_BLOCK_N,
                    num_warps=DW_WARPS)
        dweight = dw_part.sum(0).to(weight.dtype).reshape(weight.shape) if has_dw else None
        dbias = db_part.sum(0).to(bias_meta[1]).reshape(bias_meta[0]) if has_db else None
        return dx.reshape(x_shape), dweight, dbias, None, None, None


def triton_norm(x, weight, bias, n, eps, center=True):
    """y for LayerNorm (center) or RMSNorm over the last axes (n values a row), by the kernels
    (by the core's composite ops under torch.func transforms and forward-mode AD)."""
    if _composite_only():
        return _feature_y(x, weight, bias, d=n, eps=float(eps), center=center)
    return _TritonNorm.apply(x, weight, bias, n, float(eps), center)
