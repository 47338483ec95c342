"""The one core for torch: normalize over a set of axes, fused with the affine step, as an
autograd.Function with a hand-written backward. Built from elementwise ops and reductions only:
torch's own norm kernels are the test oracle, never the implementation.
"""
import torch

__all__ = ["compute_dtype", "normalize_affine"]


def compute_dtype(dtype):
    """Statistics in float64 for float64 input, float32 otherwise (float16/bfloat16 included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sum_to(a, param_shape):
    """Sum `a` over the axes where a parameter of broadcast shape `param_shape` is 1."""
    dims = [i for i, p in enumerate(param_shape) if p == 1]
    return a.sum(dim=dims) if dims else a


class _NormalizeAffine(torch.autograd.Function):
    """y = weight * xhat + bias, xhat = (x - mean) * rstd over `axes` of x.reshape(view_shape).

    Statistics come from x (mean, var: biased, keepdims in view_shape) unless `stats` = (mean, var)
    is given, as in eval-mode BatchNorm. Returns (y, mean, var); mean and var are not differentiable.
    Saves xhat (float32 or float64) and rstd: one pass less in backward, one activation more.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, axes, view_shape, param_shape, eps, center, stats):
        cdt = compute_dtype(x.dtype)
        xv = x.to(cdt).reshape(view_shape)                              # view_shape
        if stats is None and xv.numel() == 0:   # empty batch: nan statistics, no warning
            keep = [1 if i in axes else n for i, n in enumerate(view_shape)]
            mean = var = xv.new_full(keep, float("nan"))
        elif stats is None:
            if center:   # var_mean is a stable (Welford) reduction, not E[x²] - E[x]²
                var, mean = torch.var_mean(xv, dim=axes, correction=0, keepdim=True)
            else:
                var = xv.square().mean(dim=axes, keepdim=True)
                mean = torch.zeros_like(var)
        else:
            mean, var = (s.to(cdt).reshape(s.shape) for s in stats)
        rstd = torch.rsqrt(var + eps)                                    # keepdims
        xhat = ((xv - mean) * rstd if center else xv * rstd).reshape(x.shape)
        y = xhat
        if weight is not None:
            y = y * weight.to(cdt).reshape(param_shape)
        if bias is not None:
            y = y + bias.to(cdt).reshape(param_shape)
        ctx.save_for_backward(xhat, rstd, weight)
        bias_meta = None if bias is None else (bias.shape, bias.dtype)
        ctx.meta = (axes, view_shape, param_shape, center, stats is None, x.dtype, bias_meta)
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _dmean, _dvar):
        xhat, rstd, weight = ctx.saved_tensors
        axes, view_shape, param_shape, center, batch_stats, x_dtype, bias_meta = ctx.meta
        dy = dy.to(xhat.dtype)
        dx = dweight = dbias = None
        if weight is not None and ctx.needs_input_grad[1]:
            dweight = _sum_to(dy * xhat, param_shape).reshape(weight.shape).to(weight.dtype)
        if bias_meta is not None and ctx.needs_input_grad[2]:
            dbias = _sum_to(dy, param_shape).reshape(bias_meta[0]).to(bias_meta[1])
        if ctx.needs_input_grad[0]:
            dxhat = dy if weight is None else dy * weight.to(dy.dtype).reshape(param_shape)
            dxhat, xhat = dxhat.reshape(view_shape), xhat.reshape(view_shape)
            if batch_stats:   # dx = rstd * (dxhat - <dxhat> - xhat * <dxhat * xhat>)
                proj = (dxhat * xhat).mean(dim=axes, keepdim=True)
                inner = torch.addcmul(dxhat.mean(dim=axes, keepdim=True), xhat, proj) \
                    if center else xhat * proj
                dxhat = dxhat - inner
            dx = (dxhat * rstd).reshape(dy.shape).to(x_dtype)
        return dx, dweight, dbias, None, None, None, None, None, None


def normalize_affine(x, weight, bias, axes, view_shape, param_shape, eps, center=True, stats=None):
    """(y, mean, var): the core for every norm. See `_NormalizeAffine`."""
    return _NormalizeAffine.apply(x, weight, bias, tuple(axes), tuple(view_shape),
                                  tuple(param_shape), float(eps), center, stats)
