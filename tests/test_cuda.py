"""The same parity checks on CUDA, where a GPU is present; skipped otherwise."""
import pytest
import torch

import normlib.torch as nt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

MODULES = [
    (lambda m: m.BatchNorm2d(16), (8, 16, 7, 7)),
    (lambda m: m.LayerNorm(1000), (64, 1000)),
    (lambda m: m.GroupNorm(4, 16), (8, 16, 7, 7)),
    (lambda m: m.InstanceNorm2d(16, affine=True, track_running_stats=True), (8, 16, 7, 7)),
    (lambda m: m.RMSNorm(4097), (16, 4097)),
]


@pytest.mark.parametrize("params", ["float32", "input dtype"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make, shape", MODULES)
def test_cuda_matches_torch_nn(make, shape, dtype, params):
    torch.manual_seed(0)
    ours, theirs = make(nt).cuda(), make(torch.nn).cuda()
    x = (torch.randn(shape, device="cuda") * 2 + 3).to(dtype)
    xa = x.clone().requires_grad_()
    if params == "input dtype":        # the whole module cast, as model.half() does
        ours.to(dtype)
        theirs.to(dtype)
        xb = x.clone().requires_grad_()
    else:   # half input, float32 parameters (autocast's case); torch.nn's LayerNorm and GroupNorm
        xb = x.float().requires_grad_()   # refuse that mix on CUDA, so the oracle runs in float32
    ya, yb = ours(xa), theirs(xb)
    assert ya.dtype == dtype and ya.device.type == "cuda"
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(ya.float(), yb.float(), **tol)
    dy = torch.randn_like(ya)
    ya.backward(dy)
    yb.backward(dy.to(yb.dtype))
    torch.testing.assert_close(xa.grad.float(), xb.grad.float(), **tol)
    for pa, pb in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(pa.grad.float(), pb.grad.float(), rtol=3e-2, atol=3e-1)
    for ba, bb in zip(ours.buffers(), theirs.buffers()):
        torch.testing.assert_close(ba.float(), bb.float(), **tol)


@pytest.mark.parametrize("make, shape", MODULES)
def test_autocast_gives_torch_s_dtype_and_values(make, shape):
    """Under CUDA autocast torch runs LayerNorm and GroupNorm in float32 (float32 out for half
    input) and the others in the input dtype: the same result dtypes here."""
    torch.manual_seed(0)
    ours, theirs = make(nt).cuda(), make(torch.nn).cuda()
    x = (torch.randn(shape, device="cuda") * 2 + 3).half()
    with torch.autocast("cuda", dtype=torch.float16):
        ya, yb = ours(x), theirs(x)
    assert ya.dtype == yb.dtype
    torch.testing.assert_close(ya.float(), yb.float(), rtol=3e-2, atol=3e-2)


def test_cuda_gradcheck_float64():
    from normlib.torch import functional as F
    x = torch.randn(4, 3, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: F.group_norm(x, 3, w), (x, w))


def test_swap_batchnorm_puts_the_new_layers_on_the_model_s_device():
    from normlib import lab
    from normlib.lab import running
    model = lab.MLP([4, 8, 3], norm="batch").cuda().eval()
    x = torch.randn(5, 4, device="cuda")
    for make in (lambda bn: running.BatchRenorm1d(bn.num_features),
                 lambda bn: running.Algorithm2BatchNorm1d(bn.num_features, batch_size=4)):
        swapped = running.swap_batchnorm(model, make)
        assert all(t.is_cuda for t in swapped.state_dict().values())
        assert swapped.eval()(x).is_cuda and swapped.train()(x).is_cuda   # chapter 07 runs both
    swapped = running.swap_batchnorm(model, lambda bn: running.BatchRenorm1d(bn.num_features))
    torch.testing.assert_close(swapped.eval()(x), model(x))   # eval: BatchNorm's running statistics


def test_invariance_table_pieces_run_on_cuda():
    """Chapter 03's Table 1 transforms and the masked BatchNorm on a GPU: same answers as on the
    CPU (the random factors come from the same CPU generator)."""
    from normlib.lab import invariance as inv
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 4, generator=g, dtype=torch.float64)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64) + 1.0
    for name in inv.TRANSFORMS:
        cpu = inv.transform(name, weight, x, torch.Generator().manual_seed(1))
        gpu = inv.transform(name, weight.cuda(), x.cuda(), torch.Generator().manual_seed(1))
        for a, b in zip(cpu, gpu):
            torch.testing.assert_close(b.cpu(), a, msg=name)
    seqs = [torch.randn(t, 3, generator=g, dtype=torch.float64) for t in (4, 2, 3)]
    padded, mask = inv.pad_sequences([s.cuda() for s in seqs])
    assert padded.is_cuda and mask.is_cuda
    want = inv.masked_batch_norm(*inv.pad_sequences(seqs))
    torch.testing.assert_close(inv.masked_batch_norm(padded, mask).cpu(), want)
