"""normlib.torch.numba_norm, the fused CPU kernels: which inputs take them, and that they give the
composite ops' answer where the other test files cannot tell the two apart (sizes above the
thresholds, several threads, NaN in one group). Every module and functional test that takes the
`cpu_path` fixture already runs on both paths against torch.nn."""
import warnings

import pytest
import torch

import normlib._threads
import normlib.torch as nt
from normlib.torch import core

numba_norm = pytest.importorskip("normlib.torch.numba_norm")

KERNELS = ["channel_forward", "channel_backward", "feature_forward", "feature_backward"]


@pytest.fixture
def calls(monkeypatch):
    """The names of the fused kernels called, in order (the kernels on, whatever the environment
    says)."""
    monkeypatch.setattr(core, "CPU_KERNELS", True)
    monkeypatch.setattr(core, "MIN_NUMEL", 0)                 # the small inputs below too
    called = []
    for name in KERNELS:
        kernel = getattr(numba_norm, name)
        monkeypatch.setattr(numba_norm, name,
                            lambda *a, _k=kernel, _n=name, **kw: called.append(_n) or _k(*a, **kw))
    return called


LAYERS = {   # module, an input whose groups are runs of at least core.MIN_RUN values
    "BatchNorm2d": (lambda: nt.BatchNorm2d(3), (2, 3, 4, 4)),
    "BatchNorm1d": (lambda: nt.BatchNorm1d(3), (2, 3, 16)),
    "InstanceNorm1d": (lambda: nt.InstanceNorm1d(3, affine=True), (2, 3, 16)),
    "GroupNorm": (lambda: nt.GroupNorm(2, 4), (2, 4, 8)),
    "LayerNorm": (lambda: nt.LayerNorm(16), (3, 16)),
    "RMSNorm": (lambda: nt.RMSNorm(16), (3, 16)),
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_plain_cpu_input_takes_the_fused_kernels(name, dtype, calls):
    """Forward and backward, half precision too (converted to float32 first, as the core does)."""
    make, shape = LAYERS[name]
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    make().to(dtype if dtype != torch.bfloat16 else torch.float32)(x).sum().backward()
    kind = "feature" if name in ("LayerNorm", "RMSNorm") else "channel"
    assert calls == [f"{kind}_forward", f"{kind}_backward"]


def test_eval_batchnorm_with_running_statistics_takes_the_fused_kernels(calls):
    m = nt.BatchNorm2d(3).eval()
    m(torch.randn(2, 3, 4, 4, requires_grad=True)).sum().backward()
    assert calls == ["channel_forward", "channel_backward"]


@pytest.mark.parametrize("case", ["small", "short runs", "channels last", "empty", "flag off",
                                  "numba missing", "jit trace"])
def test_other_inputs_take_the_composite_ops(case, calls, monkeypatch):
    x = torch.randn(2, 3, 4, 4)
    m = nt.BatchNorm2d(3)
    if case == "small":                            # under the default MIN_NUMEL values
        monkeypatch.setattr(core, "MIN_NUMEL", 2 ** 18)
        x = torch.randn(2, 3, 64, 64)
    elif case == "short runs":                     # BatchNorm1d on (N, C): runs of one value
        m, x = nt.BatchNorm1d(3), torch.randn(8, 3)
    elif case == "channels last":
        x = x.to(memory_format=torch.channels_last)
    elif case == "empty":
        x = torch.randn(0, 3, 4, 4)
    elif case == "flag off":
        monkeypatch.setattr(core, "CPU_KERNELS", False)
    elif case == "numba missing":
        monkeypatch.setattr(core, "_NUMBA_NORM", [None])
    if case == "jit trace":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(m, x, check_trace=False)
    else:
        m(x.requires_grad_()).sum().backward()
    assert calls == []
    if case == "channels last":                    # the composite ops keep the layout
        assert m(x).is_contiguous(memory_format=torch.channels_last)


def _both_paths(fn, *inputs):
    """fn's output and the gradients of `inputs` on the fused kernels and on the composite ops."""
    results, before = [], core.CPU_KERNELS
    for fused in (True, False):
        core.CPU_KERNELS = fused
        try:
            leaves = [t.detach().clone().requires_grad_() for t in inputs]
            y = fn(*leaves)
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
            results.append([y.detach(), *torch.autograd.grad(y, leaves, dy, allow_unused=True,
                                                             materialize_grads=True)])
        finally:
            core.CPU_KERNELS = before
    return results


CASES = {   # at least core.MIN_NUMEL values, the size the kernels take by default
    "GroupNorm": (lambda x, w, b: nt.functional.group_norm(x, 4, w, b), (8, 16, 48, 48)),
    "BatchNorm": (lambda x, w, b: nt.functional.batch_norm(x, None, None, w, b, True),
                  (8, 16, 48, 48)),
    "InstanceNorm": (lambda x, w, b: nt.functional.instance_norm(x, None, None, w, b),
                     (8, 16, 48, 48)),
    "LayerNorm": (lambda x, w, b: nt.functional.layer_norm(x, [768], w, b), (4, 130, 768)),
    "RMSNorm": (lambda x, w, b: nt.functional.rms_norm(x, [768], w), (4, 130, 768)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_kernels_on_several_threads_match_the_composite_ops(name, dtype, calls):
    fn, shape = CASES[name]
    assert torch.Size(shape).numel() >= core.MIN_NUMEL
    gen = torch.Generator().manual_seed(0)
    d = shape[1] if name not in ("LayerNorm", "RMSNorm") else shape[-1]
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 2
    w, b = (torch.randn(d, generator=gen, dtype=dtype) for _ in range(2))
    fused, composite = _both_paths(fn, x, w, b)
    assert len(calls) == 2
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, c in zip(fused, composite):
        torch.testing.assert_close(a, c, **tol)


@pytest.mark.parametrize("threads", [1, 2])
def test_feature_backward_sums_over_row_slices_match(threads, monkeypatch):
    """dweight and dbias add up per-thread partial sums over slices of rows: any slicing, the
    same sums (float64, so only the order of additions differs)."""
    monkeypatch.setattr(core, "MIN_NUMEL", 0)
    monkeypatch.setattr(numba_norm, "VALUES_PER_THREAD", 1)      # a thread a slice, however small
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 33, generator=gen, dtype=torch.float64)
    w, b = torch.randn(33, generator=gen, dtype=torch.float64), torch.zeros(33, dtype=torch.float64)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused, composite = _both_paths(lambda x, w, b: nt.functional.layer_norm(x, [33], w, b),
                                       x, w, b)
    finally:
        torch.set_num_threads(old)
    for a, c in zip(fused, composite):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["GroupNorm", "LayerNorm"])
def test_nan_stays_in_its_group(name, calls):
    """A NaN spoils the statistics of its own group, and no other (fast math may reassociate sums,
    never assume values finite)."""
    if name == "GroupNorm":
        x = torch.randn(2, 4, 32, requires_grad=True)
        fn, bad = (lambda x: nt.functional.group_norm(x, 2)), (slice(0, 1), slice(0, 2))
    else:
        x = torch.randn(4, 32, requires_grad=True)
        fn, bad = (lambda x: nt.functional.layer_norm(x, [32])), (slice(0, 1),)
    with torch.no_grad():
        x[(0,) * x.dim()] = float("nan")
    y = fn(x)
    y.backward(torch.ones_like(y))
    mask = torch.zeros_like(y, dtype=torch.bool)
    mask[bad] = True
    assert torch.isnan(y[mask]).all() and torch.isfinite(y[~mask]).all()
    assert torch.isnan(x.grad[mask]).all() and torch.isfinite(x.grad[~mask]).all()
    assert len(calls) == 2


@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_leave_torchs_thread_count_alone(threads, calls):
    """A kernel call runs on as many threads as torch uses and leaves torch's setting as it was
    (Numba's OpenMP layer reset `torch.set_num_threads(1)` to 2, halving chapter 09's speed)."""
    from numba.np.ufunc import parallel
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(4, 8, 32, 32, requires_grad=True)
        nt.functional.group_norm(x, 4).sum().backward()
        nt.functional.layer_norm(x, [32]).sum().backward()
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(old)
    assert len(calls) == 4 and not parallel._is_initialized      # no Numba threading layer


def test_each_thread_gets_at_least_values_per_thread(calls, monkeypatch):
    """However many threads torch uses, a call hands each at least VALUES_PER_THREAD values: an
    input of twice that runs on two (one pool task forward, one backward), with torch's answer."""
    monkeypatch.setattr(numba_norm, "_threads", lambda: 64)
    submitted, pool = [], numba_norm.executor

    class Counting:
        def __init__(self, workers):
            self.pool = pool(workers)

        def submit(self, *args):
            submitted.append(args[-2:])                                  # lo, hi
            return self.pool.submit(*args)
    monkeypatch.setattr(numba_norm, "executor", Counting)
    x = torch.randn(256, 2 * numba_norm.VALUES_PER_THREAD // 256, dtype=torch.float64)
    w, b = (torch.randn(x.shape[1], dtype=torch.float64) for _ in range(2))
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = nt.functional.layer_norm(leaves[0], x.shape[1:], *leaves[1:])
    y.backward(torch.cos(y.detach()))
    assert len(calls) == 2 and len(submitted) == 2
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    y_ref = torch.nn.functional.layer_norm(ref[0], x.shape[1:], *ref[1:])
    y_ref.backward(torch.cos(y_ref.detach()))
    torch.testing.assert_close(y, y_ref)
    for got, want in zip(leaves, ref):
        torch.testing.assert_close(got.grad, want.grad)


def _group_norm_sum(queue, threads=None):
    """A GroupNorm forward + backward on the kernels' two threads; in a child (threads=1 for
    torch, as DataLoader workers: torch's own OpenMP pool is not usable after a fork), also whether
    the kernels are still on and started a pool of the child's own."""
    if threads:
        torch.set_num_threads(threads)
    x = torch.arange(8 * 16 * 48 * 48.0).reshape(8, 16, 48, 48).sin().requires_grad_()
    y = nt.functional.group_norm(x, 4)
    y.backward(torch.arange(float(y.numel())).reshape(y.shape).cos())
    queue.put((float(x.grad.abs().sum()), core._cpu_kernels(x) is not None,
               bool(normlib._threads._POOL)))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_after_the_pool_started_runs_a_pool_of_its_own(monkeypatch):
    """The parent's pool threads do not exist in a forked child (DataLoader workers,
    multiprocessing's fork): submitting to the parent's pool there would wait forever."""
    import multiprocessing
    monkeypatch.setattr(core, "CPU_KERNELS", True)
    monkeypatch.setattr(numba_norm, "_threads", lambda: 2)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    _group_norm_sum(queue)
    want, fused, pooled = queue.get(timeout=5)                          # the parent's pool ran
    assert fused and pooled
    child = ctx.Process(target=_group_norm_sum, args=(queue, 1))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    got, fused, pooled = queue.get(timeout=5)
    assert got == pytest.approx(want, rel=1e-5) and fused and pooled
