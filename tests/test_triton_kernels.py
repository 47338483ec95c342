"""The Triton LayerNorm/RMSNorm kernels against torch.nn.functional and float64 references.

On a CUDA machine they run on the GPU at every required width and dtype; elsewhere they run in
Triton's interpreter (TRITON_INTERPRET=1, CPU tensors) on small shapes, so CI tests the kernels'
logic without a GPU. Skipped when Triton is not installed.
"""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is imported
triton_norm = pytest.importorskip("normlib.torch.triton_norm")

DEVICE = "cuda" if CUDA else "cpu"
WIDTHS = [1, 7, 1000, 4097, 16384, 65536] if CUDA else [1, 7, 100, 257]
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if CUDA else [torch.float32,
                                                                         torch.float16]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


def _reference(x, w, b, eps, center):
    """float64 LayerNorm (center) or RMSNorm, written out."""
    x = x.double()
    xc = x - x.mean(-1, keepdim=True) if center else x
    y = xc / (xc.square().mean(-1, keepdim=True) + eps).sqrt() * w.double()
    return y + b.double() if b is not None else y


def _run(n, dtype, center, rows=3, patches=(), monkeypatch=None, pad=0):
    for name, value in patches:   # e.g. lower the width thresholds to reach the wide-row paths
        monkeypatch.setattr(triton_norm, name, value)
    gen = torch.Generator().manual_seed(n)
    x = (torch.randn(rows, n + pad, generator=gen) * 2 + 3).to(DEVICE, dtype)[:, :n]   # strided
    x.requires_grad_()
    w = torch.randn(n, generator=gen).to(DEVICE, dtype).requires_grad_()
    b = torch.randn(n, generator=gen).to(DEVICE, dtype).requires_grad_() if center else None
    eps = 1e-5
    y = triton_norm.triton_norm(x, w, b, n, eps, center)
    dy = torch.randn(y.shape, generator=gen).to(DEVICE, dtype)
    y.backward(dy)
    grads = (x.grad, w.grad, b.grad if center else None)
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_() if center else None
    if center:
        y2 = torch.nn.functional.layer_norm(x2.float(), [n], w2.float(), b2.float(), eps)
    else:
        y2 = torch.nn.functional.rms_norm(x2.float(), [n], w2.float(), eps)
    y2.backward(dy.float())
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), y2, **TOL[dtype])
    torch.testing.assert_close(y.double(), _reference(x.detach(), w.detach(), b if b is None
                               else b.detach(), eps, center), **TOL[dtype])
    torch.testing.assert_close(grads[0].float(), x2.grad.float(), **TOL[dtype])
    gtol = dict(rtol=TOL[dtype]["rtol"] * 5, atol=TOL[dtype]["atol"] * 5 * rows)
    torch.testing.assert_close(grads[1].float(), w2.grad.float(), **gtol)
    if center:
        torch.testing.assert_close(grads[2].float(), b2.grad.float(), **gtol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_kernels_match_torch(n, dtype, center):
    _run(n, dtype, center)


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_chunked_path_for_wide_rows(center, monkeypatch):
    patches = [("MAX_FUSED_BYTES", 16), ("CHUNK_N", 16)]          # 50 columns in 4 chunks
    _run(50, torch.float32, center, rows=5, patches=patches, monkeypatch=monkeypatch)


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_two_kernel_backward_for_wide_rows(center, monkeypatch):
    patches = [("FUSED_BACKWARD_N", 16), ("DW_BLOCK_M", 4), ("DW_BLOCK_N", 16)]   # tiles 4 x 16
    _run(50, torch.float32, center, rows=37, patches=patches, monkeypatch=monkeypatch, pad=3)


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_fused_backward_walks_row_tiles(center):
    _run(257, torch.float32, center, rows=37, pad=5)   # tiles of 8 rows, some programs take two


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernel"])
@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_without_weight_or_bias_and_without_rows(center, fused, monkeypatch):
    if not fused:
        monkeypatch.setattr(triton_norm, "FUSED_BACKWARD_N", 0)
    x = torch.randn(6, 40, device=DEVICE, requires_grad=True)
    b = torch.randn(40, device=DEVICE, requires_grad=True) if center else None
    y = triton_norm.triton_norm(x, None, b, 40, 1e-5, center)
    x2 = x.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_() if center else None
    y2 = (torch.nn.functional.layer_norm(x2, [40], None, b2) if center
          else torch.nn.functional.rms_norm(x2, [40], None, 1e-5))
    dy = torch.randn_like(y)
    y.backward(dy)
    y2.backward(dy)
    torch.testing.assert_close(x.grad, x2.grad, **TOL[torch.float32])
    if center:
        torch.testing.assert_close(b.grad, b2.grad, **TOL[torch.float32])
    w = torch.randn(40, device=DEVICE, requires_grad=True)
    empty = torch.zeros(0, 40, device=DEVICE, requires_grad=True)
    triton_norm.triton_norm(empty, w, b, 40, 1e-5, center).sum().backward()
    assert empty.grad.shape == (0, 40) and not w.grad.any()


def test_offset_rows_keep_float32_accuracy():
    x64 = 1e3 + 0.1 * torch.randn(8, 256, dtype=torch.float64)
    w = torch.ones(256, device=DEVICE)
    y = triton_norm.triton_norm(x64.float().to(DEVICE), w, None, 256, 1e-5)
    want = (x64 - x64.mean(-1, keepdim=True)) / (x64.var(-1, unbiased=False, keepdim=True)
                                                 + 1e-5).sqrt()
    assert (y.double().cpu() - want).abs().max() < 1e-2


@pytest.mark.skipif(not CUDA, reason="dispatch to the kernels happens for CUDA tensors only")
def test_functional_dispatches_cuda_tensors_to_the_kernels():
    from normlib.torch import functional as F
    y = F.layer_norm(torch.randn(4, 64, device="cuda", requires_grad=True), [64])
    assert "TritonNorm" in type(y.grad_fn).__name__


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_second_derivatives_match_torch(center):
    """A gradient penalty through the kernels' Function (its recorded backward is composite) gives
    torch's second-order gradients of the input and the parameters."""
    gen = torch.Generator().manual_seed(1)
    x, v = (torch.randn(6, 40, generator=gen).to(DEVICE) for _ in range(2))
    w = torch.randn(40, generator=gen).to(DEVICE)
    b = torch.randn(40, generator=gen).to(DEVICE) if center else None
    grads = []
    for fn in (lambda x, w, b: triton_norm.triton_norm(x, w, b, 40, 1e-5, center),
               lambda x, w, b: torch.nn.functional.layer_norm(x, [40], w, b) if center
               else torch.nn.functional.rms_norm(x, [40], w, 1e-5)):
        leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
        dx, = torch.autograd.grad((fn(*leaves, *(None,) * (3 - len(leaves))) * v).sum(),
                                  leaves[0], create_graph=True)
        grads.append(torch.autograd.grad(dx.square().sum(), leaves, allow_unused=True,
                                         materialize_grads=True))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")   # torch's jvp decomps
@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_function_transforms_match_torch(center):
    """Under torch.func (vmap of grad, jvp) the kernels' entry point runs the core's composite
    ops, where the Function would need transform rules, and a backward given a batch of dy
    (a vectorized jacobian) runs them too: the answers are torch's."""
    gen = torch.Generator().manual_seed(2)
    xs, t = (torch.randn(3, 5, 40, generator=gen).to(DEVICE) for _ in range(2))
    w = torch.randn(40, generator=gen).to(DEVICE)
    ours = lambda x: triton_norm.triton_norm(x, w, None, 40, 1e-5, center)   # noqa: E731
    theirs = lambda x: (torch.nn.functional.layer_norm(x, [40], w) if center   # noqa: E731
                        else torch.nn.functional.rms_norm(x, [40], w, 1e-5))
    for transform in (lambda f: torch.func.vmap(torch.func.grad(lambda x: f(x).sin().sum())),
                      lambda f: lambda x: torch.func.jvp(f, (x,), (t,))[1],
                      lambda f: lambda x: torch.autograd.functional.jacobian(   # batched dy
                          f, x[0], vectorize=True)):
        torch.testing.assert_close(transform(ours)(xs), transform(theirs)(xs), rtol=1e-4,
                                   atol=1e-4)
