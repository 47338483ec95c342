"""normlib.torch.functional: torch's signatures, float64 gradcheck and gradgradcheck, torch's norm
ops never called,
numerics (offset data, NaN, half precision, empty inputs: the NumPy reference's too)."""
import inspect
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import normlib.numpy as nn_
import normlib.torch as nt
from normlib.torch import functional as F

from ops_recorder import RecordOps  # tests/ops_recorder.py

NAMES = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"]


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_torch_nn_functional_s(name):
    ours = inspect.signature(getattr(F, name)).parameters
    theirs = inspect.signature(getattr(TF, name)).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == \
           [(p.name, p.default, p.kind) for p in theirs.values()]


def _d(*shape, scale=1.0, offset=0.0):
    """float64 leaf tensor that requires grad."""
    return (torch.randn(*shape, dtype=torch.float64) * scale + offset).requires_grad_()


RM, RV = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor([0.5, 2.0, 3.0],
                                                                          dtype=torch.float64)
GRADCHECK = {
    "batch_norm train": lambda: (lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
                                 (_d(5, 3, 2), _d(3), _d(3))),
    "batch_norm eval": lambda: (lambda x, w, b: F.batch_norm(x, RM, RV, w, b),
                                (_d(5, 3), _d(3), _d(3))),
    "layer_norm": lambda: (lambda x, w, b: F.layer_norm(x, [3, 4], w, b),
                           (_d(2, 3, 4), _d(3, 4), _d(3, 4))),
    "group_norm": lambda: (lambda x, w, b: F.group_norm(x, 2, w, b), (_d(2, 4, 3), _d(4), _d(4))),
    "instance_norm": lambda: (lambda x, w, b: F.instance_norm(x, weight=w, bias=b),
                              (_d(2, 3, 5), _d(3), _d(3))),
    "instance_norm running": lambda: (lambda x, w, b: F.instance_norm(
        x, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), w, b,
        use_input_stats=False), (_d(2, 3, 5), _d(3), _d(3))),
    "rms_norm": lambda: (lambda x, w, b: F.rms_norm(x, [4], w) + 0 * b.sum(),
                         (_d(3, 4), _d(4), _d(4))),
    "no affine": lambda: (lambda x, w, b: F.layer_norm(x, [4]) + 0 * (w.sum() + b.sum()),
                          (_d(3, 4), _d(4), _d(4))),
}


@pytest.mark.parametrize("case", list(GRADCHECK))
def test_gradcheck_float64(case, cpu_path):
    """Also batched gradients (is_grads_batched, as vectorized jacobians use): the backward then
    runs under vmap."""
    torch.manual_seed(0)
    fn, inputs = GRADCHECK[case]()
    assert torch.autograd.gradcheck(fn, inputs, check_batched_grad=True)


@pytest.mark.parametrize("case", list(GRADCHECK))
def test_gradgradcheck_float64(case, cpu_path):
    """Second derivatives (a backward recorded with create_graph=True) against finite differences
    of the first: gradient penalties and Hessian-vector products work as with torch.nn."""
    torch.manual_seed(0)
    fn, inputs = GRADCHECK[case]()
    assert torch.autograd.gradgradcheck(fn, inputs, check_batched_grad=True)


# A vector norm is a reduction (the root of a sum of squares), not a normalization layer: the core
# uses it to sum (x - mean)² without a temporary. Every other op with "norm" in its name is refused.
REDUCTIONS = {"linalg_vector_norm.default"}


def _norm_ops(fn):
    """The aten ops with 'norm' in their name that fn() runs: forward, backward, and the backward
    of a recorded backward (a gradient penalty)."""
    x = torch.randn(4, 6, 3, 3, requires_grad=True)
    with RecordOps() as rec:
        fn(x).square().sum().backward()
        dx, = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
        dx.square().sum().backward()
    return {op for op in rec.ops if "norm" in op} - REDUCTIONS


MODULES = {
    "BatchNorm2d": lambda: nt.BatchNorm2d(6),
    "LayerNorm": lambda: nt.LayerNorm([6, 3, 3]),
    "GroupNorm": lambda: nt.GroupNorm(3, 6),
    "InstanceNorm2d": lambda: nt.InstanceNorm2d(6, affine=True, track_running_stats=True),
    "RMSNorm": lambda: nt.RMSNorm(3),
}


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("params", ["weight and bias", "weight", "none"])
def test_layer_and_rms_norm_over_several_row_blocks(monkeypatch, center, params):
    """On the CPU rows are walked in blocks (core.BLOCK_BYTES); a ragged set of blocks must give
    torch's answer and pass gradcheck, and dx alone or the parameters alone must be right too."""
    from normlib.torch import core
    monkeypatch.setattr(core, "CPU_KERNELS", False)                       # the composite ops' blocks
    monkeypatch.setattr(core, "BLOCK_BYTES", 3 * 5 * 8)                  # 3 rows of 5 float64
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 4, 5, generator=gen, dtype=torch.float64) * 2 + 3).requires_grad_()
    assert [(b.start, b.stop) for b in core._row_blocks(x.detach().reshape(-1, 5))] == \
        [(0, 3), (3, 6), (6, 8)]
    w = (torch.rand(5, generator=gen, dtype=torch.float64) + 0.5).requires_grad_() \
        if params != "none" else None
    b = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_() \
        if params == "weight and bias" and center else None
    ours = (lambda x, w, b: F.layer_norm(x, (5,), w, b)) if center else \
        (lambda x, w, b: F.rms_norm(x, (5,), w, eps=1e-6))
    theirs = (lambda x, w, b: TF.layer_norm(x, (5,), w, b)) if center else \
        (lambda x, w, b: TF.rms_norm(x, (5,), w, eps=1e-6))
    inputs = [t for t in (x, w, b) if t is not None]
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ya, yb = ours(x, w, b), theirs(x, w, b)
    torch.testing.assert_close(ya, yb)
    for ga, gb in zip(torch.autograd.grad(ya, inputs, dy), torch.autograd.grad(yb, inputs, dy)):
        torch.testing.assert_close(ga, gb)
    assert torch.autograd.gradcheck(lambda *t: ours(*t, *(None,) * (3 - len(t))), inputs)
    for wanted in inputs:   # one gradient at a time: the others are skipped, this one still right
        ga, = torch.autograd.grad(ours(x, w, b), wanted, dy)
        gb, = torch.autograd.grad(theirs(x, w, b), wanted, dy)
        torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("name", list(MODULES))
def test_torch_norm_ops_are_never_called(name):
    m = MODULES[name]()
    assert _norm_ops(m) == set()
    m.eval()
    assert _norm_ops(m) == set()


def test_the_norm_op_detector_detects_torch_norms():
    """The check above can fail: torch's own layers are caught."""
    assert _norm_ops(torch.nn.LayerNorm([6, 3, 3]))
    assert _norm_ops(torch.nn.BatchNorm2d(6))
    assert _norm_ops(torch.nn.GroupNorm(3, 6))


OFFSET_CASES = {   # (ours, float64 reference from the same definition)
    "batch_norm": lambda x: F.batch_norm(x, None, None, training=True),
    "layer_norm": lambda x: F.layer_norm(x, [x.shape[-1]]),
    "group_norm": lambda x: F.group_norm(x, 4),
    "instance_norm": lambda x: F.instance_norm(x.reshape(x.shape[0], 8, -1)).reshape(x.shape),
}


@pytest.mark.parametrize("name", list(OFFSET_CASES))
def test_float32_offset_data_is_normalized_accurately(name, cpu_path):
    """1e3 + 0.1·z in float32: E[x²] - E[x]² would lose all digits; we stay within 1e-2."""
    torch.manual_seed(0)
    x64 = 1e3 + 0.1 * torch.randn(64, 8, 32, dtype=torch.float64)
    got = OFFSET_CASES[name](x64.float()).double()
    want = OFFSET_CASES[name](x64)
    assert (got - want).abs().max() < 1e-2


def test_rms_norm_float32_large_values_are_accurate(cpu_path):
    x64 = 1e3 + 0.1 * torch.randn(16, 64, dtype=torch.float64)
    assert (F.rms_norm(x64.float(), [64]).double() - F.rms_norm(x64, [64])).abs().max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates_without_crashing(name, cpu_path):
    x = torch.randn(4, 4, 3, requires_grad=True)
    with torch.no_grad():
        x[0, 0, 0] = float("nan")
    call = {"batch_norm": lambda: F.batch_norm(x, None, None, training=True),
            "layer_norm": lambda: F.layer_norm(x, [3]),
            "group_norm": lambda: F.group_norm(x, 2),
            "instance_norm": lambda: F.instance_norm(x),
            "rms_norm": lambda: F.rms_norm(x, [3])}[name]
    y = call()
    y.sum().backward()
    assert torch.isnan(y).any() and not torch.isnan(y).all()
    assert torch.isnan(x.grad).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(MODULES))
def test_half_precision_returns_input_dtype_with_float32_statistics(dtype, name, cpu_path):
    torch.manual_seed(0)
    m = MODULES[name]()
    x32 = (5 + torch.randn(8, 6, 3, 3)).to(dtype).float()
    x = x32.to(dtype).requires_grad_()
    y = m(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    assert (y.float() - MODULES[name]()(x32)).abs().max() < tol


def test_half_input_with_float32_parameters_like_autocast():
    m = nt.LayerNorm(8)
    y = m(torch.randn(4, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert m.weight.grad.dtype == torch.float32


EMPTY = [  # (module factory given torch.nn or normlib.torch, input shape): nothing to normalize
    (lambda m: m.LayerNorm(4), (0, 4)), (lambda m: m.LayerNorm(0), (3, 0)),
    (lambda m: m.RMSNorm(4), (0, 4)), (lambda m: m.RMSNorm(0), (3, 0)),
    (lambda m: m.BatchNorm1d(3), (0, 3)), (lambda m: m.BatchNorm1d(3), (4, 3, 0)),
    (lambda m: m.InstanceNorm1d(3, affine=True, track_running_stats=True), (2, 3, 0)),
    (lambda m: m.GroupNorm(2, 4), (0, 4, 3)), (lambda m: m.GroupNorm(2, 4), (2, 4, 0)),
]


NUMPY_AS_TORCH_NN = SimpleNamespace(   # normlib.numpy's modules under torch.nn's names
    LayerNorm=nn_.LayerNorm, RMSNorm=nn_.RMSNorm, BatchNorm1d=nn_.BatchNorm,
    InstanceNorm1d=nn_.InstanceNorm, GroupNorm=nn_.GroupNorm)


def _empty_run(module, shape):
    """(y, dx, parameter grads, buffers) of one training step on an empty input of `shape`."""
    for b in module.buffers():
        if b.is_floating_point():
            b.fill_(0.5)
    x = torch.randn(shape, requires_grad=True)
    y = module(x)
    y.sum().backward()
    return y, x.grad, [p.grad for p in module.parameters()], list(module.buffers())


@pytest.mark.parametrize("make, shape", EMPTY)
def test_empty_inputs_train_like_torch(make, shape):
    """Empty batches and empty normalized axes: same shapes, parameter gradients 0 (a sum over no
    values) and running statistics untouched, as torch. Where torch differs it is the odd one out:
    its GroupNorm gives nan parameter gradients on empty spatial axes, its BatchNorm gives 0."""
    twin = make(torch.nn)
    ours, theirs = _empty_run(make(nt), shape), _empty_run(twin, shape)
    assert ours[0].shape == theirs[0].shape == shape and ours[1].shape == shape
    for g in ours[2]:
        assert torch.equal(g, torch.zeros_like(g))
    for mine, torchs in zip(ours[2] + ours[3], theirs[2] + theirs[3]):
        assert torch.equal(mine, torchs) or (isinstance(twin, torch.nn.GroupNorm)
                                             and torchs.isnan().all())


@pytest.mark.parametrize("make, shape", EMPTY)
def test_numpy_reference_agrees_on_empty_inputs(make, shape):
    """The NumPy modules: same shapes, zero parameter gradients, buffers untouched, no warnings."""
    module = make(NUMPY_AS_TORCH_NN)
    for b in ("running_mean", "running_var"):
        if getattr(module, b, None) is not None:
            getattr(module, b)[:] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = module.forward(np.zeros(shape, np.float32))
        dx = module.backward(np.ones(shape, np.float32))
    assert y.shape == dx.shape == shape
    for g in ("dweight", "dbias"):
        if getattr(module, g, None) is not None:
            assert not getattr(module, g).any()
    for b in ("running_mean", "running_var"):
        if getattr(module, b, None) is not None:
            assert (getattr(module, b) == 0.5).all(), b


def test_empty_batches_work_like_torch():
    ours, theirs = nt.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    for m in (ours, theirs):
        m.running_mean.fill_(0.5)
        assert m(torch.empty(0, 3)).shape == (0, 3)
    assert torch.equal(ours.running_mean, theirs.running_mean)
    assert ours.num_batches_tracked == theirs.num_batches_tracked == 1
    assert nt.LayerNorm(4)(torch.empty(0, 4)).shape == (0, 4)
    assert nt.GroupNorm(2, 4)(torch.empty(0, 4, 3)).shape == (0, 4, 3)
    assert nt.RMSNorm(4)(torch.empty(0, 4)).shape == (0, 4)
    assert nt.InstanceNorm1d(3)(torch.empty(0, 3, 5)).shape == (0, 3, 5)
