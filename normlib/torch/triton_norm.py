"""Fused Triton kernels for LayerNorm and RMSNorm (forward and backward), used for CUDA tensors.

The math is the core's (see `core.py`), one row of x (M, N) per program:

    forward:   mean = Σx / N (0 for RMSNorm),  var = Σ(x - mean)² / N,  rstd = 1 / sqrt(var + eps)
               xhat = (x - mean) * rstd,       y = xhat * w + b
    backward:  wdy = w * dy,  c1 = Σ(xhat * wdy) / N,  c2 = Σ wdy / N (0 for RMSNorm)
               dx = (wdy - (xhat * c1 + c2)) * rstd
               dw = Σ_rows dy * xhat,  db = Σ_rows dy

The forward reads x once when a row fits on chip (BLOCK_N >= N) and keeps it in registers; wider rows
are streamed in chunks (mean, then variance, then output: three reads that L2 mostly serves). Mean
and rstd are stored in float32 for the backward, which recomputes xhat instead of reading it.
The backward runs a persistent grid (about one program per SM): each program walks its rows and
accumulates float32 partial sums of dw and db, which a small torch reduction over programs finishes.
Statistics are float32 for every input dtype. Importing this module imports triton: callers import
it lazily (normlib.torch.functional does).
"""
import torch
import triton
import triton.language as tl

MAX_FUSED_BYTES = 65536   # rows up to this size (in the input dtype) stay in registers


@triton.jit
def _forward_kernel(X, Y, W, B, Mean, Rstd,   # pointers: x, y (M, N); w, b (N); mean, rstd (M)
                    stride_x, stride_y,        # row strides of x and y, in elements
                    N, eps,                    # row width, epsilon
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, CENTER: tl.constexpr,
                    BLOCK_N: tl.constexpr, ONE_BLOCK: tl.constexpr):
    row = tl.program_id(0)
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
    else:                                                           # wide rows, chunk by chunk
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
                     DW, DB,                      # partial sums (programs, N), float32
                     stride_x, stride_dy, stride_dx,
                     M, N,
                     HAS_W: tl.constexpr, CENTER: tl.constexpr, BLOCK_N: tl.constexpr,
                     ONE_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    if ONE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) if HAS_W else 1.0
        dw = tl.zeros([BLOCK_N], dtype=tl.float32)
        db = tl.zeros([BLOCK_N], dtype=tl.float32)
        for row in range(pid, M, programs):
            x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(Rstd + row)
            xhat = tl.where(mask, (x - tl.load(Mean + row)) * rstd, 0.0)
            wdy = w * dy
            c1 = tl.sum(xhat * wdy, axis=0) / N
            dx = wdy - xhat * c1
            if CENTER:
                dx -= tl.sum(wdy, axis=0) / N
            tl.store(DX + row * stride_dx + cols, (dx * rstd).to(DX.dtype.element_ty), mask=mask)
            dw += dy * xhat
            db += dy
        tl.store(DW + pid * N + cols, dw, mask=mask)
        tl.store(DB + pid * N + cols, db, mask=mask)
    else:   # wide rows: two passes per row; partial sums stay in this program's row of DW/DB
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            tl.store(DW + pid * N + cols, tl.zeros([BLOCK_N], dtype=tl.float32), mask=cols < N)
            tl.store(DB + pid * N + cols, tl.zeros([BLOCK_N], dtype=tl.float32), mask=cols < N)
        for row in range(pid, M, programs):
            mean = tl.load(Mean + row)
            rstd = tl.load(Rstd + row)
            acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) if HAS_W else 1.0
                xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                acc1 += xhat * w * dy
                acc2 += w * dy
            c1 = tl.sum(acc1, axis=0) / N
            c2 = tl.sum(acc2, axis=0) / N if CENTER else 0.0
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) if HAS_W else 1.0
                xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                dx = (w * dy - (xhat * c1 + c2)) * rstd
                tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
                dw_old = tl.load(DW + pid * N + cols, mask=mask, other=0.0)
                db_old = tl.load(DB + pid * N + cols, mask=mask, other=0.0)
                tl.store(DW + pid * N + cols, dw_old + dy * xhat, mask=mask)
                tl.store(DB + pid * N + cols, db_old + dy, mask=mask)


def _block(n, element_size):
    """(BLOCK_N, ONE_BLOCK): the whole row when it fits in MAX_FUSED_BYTES, else 4096-wide chunks."""
    full = triton.next_power_of_2(max(n, 1))
    if full * element_size <= MAX_FUSED_BYTES:
        return full, True
    return min(4096, full), False


def _warps(block_n):
    """More warps for wider blocks, as Triton's tutorial does."""
    return min(max(block_n // 256, 1), 16)


def _programs(x, m):
    """The persistent backward grid: about 4 programs per SM on a GPU, few in the interpreter."""
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        return max(1, min(m, 4 * sms))
    return max(1, min(m, 4))


class _TritonNorm(torch.autograd.Function):
    """LayerNorm (center=True) or RMSNorm (center=False) over the last dim of x viewed as (M, N)."""

    @staticmethod
    def forward(ctx, x, weight, bias, n, eps, center):
        weight = None if weight is None else weight.contiguous()
        bias = None if bias is None else bias.contiguous()
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
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.meta = (x.shape, n, center, None if bias is None else (bias.shape, bias.dtype))
        return y.reshape(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        x_shape, n, center, bias_meta = ctx.meta
        dy2 = dy.reshape(-1, n)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        m = x2.shape[0]
        dx = torch.empty_like(x2, memory_format=torch.contiguous_format)
        programs = _programs(x2, m)
        dw_part = torch.zeros(programs, n, dtype=torch.float32, device=x2.device)
        db_part = torch.zeros(programs, n, dtype=torch.float32, device=x2.device)
        block_n, one_block = _block(n, x2.element_size())
        if m > 0:
            _backward_kernel[(programs,)](
                x2, dy2, dx, weight if weight is not None else x2, mean, rstd, dw_part, db_part,
                x2.stride(0), dy2.stride(0), dx.stride(0), m, n,
                HAS_W=weight is not None, CENTER=center, BLOCK_N=block_n, ONE_BLOCK=one_block,
                num_warps=_warps(block_n))
        dweight = dbias = None
        if weight is not None and ctx.needs_input_grad[1]:
            dweight = dw_part.sum(0).to(weight.dtype).reshape(weight.shape)
        if bias_meta is not None and ctx.needs_input_grad[2]:
            dbias = db_part.sum(0).to(bias_meta[1]).reshape(bias_meta[0])
        return dx.reshape(x_shape), dweight, dbias, None, None, None


def triton_norm(x, weight, bias, n, eps, center=True):
    """y for LayerNorm (center) or RMSNorm over the last axes (n values a row), by the kernels."""
    return _TritonNorm.apply(x, weight, bias, n, float(eps), center)
