"""normlib.torch against torch.nn where a user swapping one for the other would notice: old
checkpoints, tracing, copying, half-given buffers, non-float input, inputs of the wrong rank,
second derivatives."""
import copy
import inspect
import pickle
import warnings

import pytest
import torch
from torch import nn

import normlib.torch as nt
from normlib.torch import functional as F

MODULES = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm", "SyncBatchNorm"]


@pytest.mark.parametrize("name", MODULES)
def test_constructor_signature_is_torch_nn_s(name):
    ours = inspect.signature(getattr(nt, name).__init__).parameters
    theirs = inspect.signature(getattr(nn, name).__init__).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == \
           [(p.name, p.default, p.kind) for p in theirs.values()]


@pytest.mark.parametrize("name", ["BatchNorm1d", "InstanceNorm1d", "SyncBatchNorm"])
def test_state_dict_version_is_torch_s(name):
    ours, theirs = getattr(nt, name)(3), getattr(nn, name)(3)
    assert ours.state_dict()._metadata[""] == theirs.state_dict()._metadata[""]


def _without_num_batches_tracked(m):
    """m's state_dict as a checkpoint from before num_batches_tracked (a plain dict, no version)."""
    return {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("strict", [True, False])
def test_old_checkpoint_without_num_batches_tracked_loads(strict):
    old = nn.BatchNorm2d(3)
    old(torch.randn(4, 3, 2, 2))
    ours, theirs = nt.BatchNorm2d(3), nn.BatchNorm2d(3)
    got = ours.load_state_dict(_without_num_batches_tracked(old), strict=strict)
    want = theirs.load_state_dict(_without_num_batches_tracked(old), strict=strict)
    assert got == want
    assert ours.num_batches_tracked.item() == 0
    torch.testing.assert_close(ours.running_mean, old.running_mean)


def test_old_checkpoint_loads_into_a_model():
    old = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
    ours = nn.Sequential(nn.Conv2d(1, 3, 1), nt.BatchNorm2d(3))
    ours.load_state_dict(_without_num_batches_tracked(old))
    assert ours[1].num_batches_tracked.item() == 0


@pytest.mark.parametrize("strict", [True, False])
def test_instance_norm_refuses_running_stats_it_does_not_track(strict):
    """A pre-0.4 checkpoint (plain dict) with running stats: torch names the cause, even lax."""
    sd = {k: v for k, v in nn.InstanceNorm1d(3, track_running_stats=True).state_dict().items()
          if k != "num_batches_tracked"}
    for m in (nt.InstanceNorm1d(3), nn.InstanceNorm1d(3)):
        with pytest.raises(RuntimeError, match="track_running_stats=False"):
            m.load_state_dict(dict(sd), strict=strict)


@pytest.mark.parametrize("make, shape", [
    (lambda m: m.BatchNorm2d(3), (2, 3, 4, 4)), (lambda m: m.BatchNorm1d(3), (4, 3)),
    (lambda m: m.InstanceNorm1d(3, track_running_stats=True), (2, 3, 5)),
    (lambda m: m.InstanceNorm2d(3), (2, 3, 4, 4)), (lambda m: m.GroupNorm(1, 3), (2, 3, 4)),
    (lambda m: m.LayerNorm(4), (2, 4)), (lambda m: m.RMSNorm(4), (2, 4)),
])
@pytest.mark.parametrize("training", [True, False])
def test_jit_trace_matches_eager(make, shape, training):
    m = make(nt).train(training)
    x = torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the tracer warns about Python-side shape checks
        traced = torch.jit.trace(copy.deepcopy(m), x, check_trace=False)
    torch.testing.assert_close(traced(x), m(x))


@pytest.mark.parametrize("make, shape", [
    (lambda m: m.BatchNorm2d(3), (2, 3, 4, 4)), (lambda m: m.LayerNorm(4), (2, 4)),
    (lambda m: m.GroupNorm(1, 3), (2, 3, 4)),
    (lambda m: m.InstanceNorm1d(3, affine=True), (2, 3, 5)),
])
def test_deepcopy_and_pickle_keep_state_and_output(make, shape):
    m = make(nt)
    m(torch.randn(shape))
    x = torch.randn(shape)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(clone) is type(m)
        for k, v in m.state_dict().items():
            assert torch.equal(clone.state_dict()[k], v)
        torch.testing.assert_close(clone.eval()(x), m.eval()(x))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
@pytest.mark.parametrize("call", [
    lambda x: F.batch_norm(x, None, None, training=True), lambda x: F.layer_norm(x, [4]),
    lambda x: F.group_norm(x, 2), lambda x: F.instance_norm(x), lambda x: F.rms_norm(x, [4]),
])
def test_non_float_input_raises_as_torch_does(call, dtype):
    """torch refuses integer/bool/complex input; normlib must not return rounded integers."""
    x = torch.ones(2, 4, 4).to(dtype)
    with pytest.raises(RuntimeError, match="floating-point input"):
        call(x)


@pytest.mark.parametrize("cls", [nt.BatchNorm1d, nt.SyncBatchNorm])
def test_non_float_input_leaves_running_stats_alone(cls):
    m = cls(4)
    with pytest.raises(RuntimeError, match="floating-point input"):
        m(torch.arange(8).reshape(2, 4))
    assert m.num_batches_tracked.item() == 0


@pytest.mark.parametrize("given", ["running_mean", "running_var"])
@pytest.mark.parametrize("norm", ["batch_norm", "instance_norm"])
def test_one_running_buffer_without_the_other_raises(norm, given):
    """torch: 'running_mean and running_var must either both be None or neither be None'."""
    buffers = {"running_mean": None, "running_var": None, given: torch.zeros(3) + 1}
    before = buffers[given].clone()
    with pytest.raises(ValueError, match="running_mean and running_var"):
        getattr(F, norm)(torch.randn(4, 3, 5), buffers["running_mean"], buffers["running_var"],
                         None, None, True)
    assert torch.equal(buffers[given], before)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        getattr(nn.functional, norm)(torch.randn(4, 3, 5), buffers["running_mean"],
                                     buffers["running_var"], None, None, True)


@pytest.mark.parametrize("shape", [(4,), ()])
def test_groupnorm_module_refuses_input_without_channels(shape):
    with pytest.raises(ValueError, match="expected input of shape \\(N, C, \\*\\)"):
        nt.GroupNorm(2, 4)(torch.randn(shape))


@pytest.mark.parametrize("make, shape", [
    (lambda m: m.InstanceNorm1d(3, affine=True), (3, 5)),
    (lambda m: m.InstanceNorm1d(3, track_running_stats=True), (3, 5)),
    (lambda m: m.InstanceNorm2d(3), (3, 4, 4)), (lambda m: m.InstanceNorm3d(3), (3, 2, 2, 2)),
    (lambda m: m.BatchNorm1d(3), (4, 3)), (lambda m: m.BatchNorm1d(3), (4, 3, 5)),
])
@pytest.mark.parametrize("training", [True, False])
def test_unbatched_and_1d_inputs_match_torch(make, shape, training):
    ours, theirs = make(nt).train(training), make(nn).train(training)
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x))
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v)


@pytest.mark.parametrize("make, x", [
    (lambda m: m.GroupNorm(5, 5), torch.randn(2, 3, 4, 5).transpose(1, 3)),
    (lambda m: m.LayerNorm([4, 3]), torch.randn(2, 3, 4).transpose(1, 2)),
    (lambda m: m.BatchNorm2d(5), torch.randn(2, 3, 4, 5).transpose(1, 3)),
    (lambda m: m.RMSNorm(3), torch.randn(2, 3, 4).transpose(1, 2)),
])
def test_non_contiguous_input_matches_torch(make, x):
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ya, yb = make(nt)(xa), make(nn)(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Mismatch dtype")   # torch's rms_norm: no fused kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make, shape", [
    (lambda m: m.BatchNorm2d(3), (4, 3, 4, 4)), (lambda m: m.LayerNorm(8), (4, 8)),
    (lambda m: m.GroupNorm(1, 3), (4, 3, 8)), (lambda m: m.RMSNorm(8), (4, 8)),
    (lambda m: m.InstanceNorm1d(3, affine=True), (4, 3, 8)),
])
def test_half_input_with_float32_parameters_matches_torch(make, shape, dtype):
    ours, theirs = make(nt), make(nn)
    x = torch.randn(shape).to(dtype)
    ya, yb = ours(x), theirs(x)
    assert ya.dtype == yb.dtype == dtype
    torch.testing.assert_close(ya, yb, rtol=2e-2, atol=2e-2)
    for k, v in theirs.state_dict().items():
        assert ours.state_dict()[k].dtype == v.dtype
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-3, atol=1e-3)


def test_momentum_and_track_running_stats_changed_after_construction():
    ours, theirs = nt.BatchNorm1d(3, momentum=None), nn.BatchNorm1d(3, momentum=None)
    x = torch.randn(8, 3)
    for step in range(4):
        for m in (ours, theirs):
            m.momentum = 0.5 if step == 1 else m.momentum
            m.track_running_stats = step != 2
            m(x + step)
        for k, v in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[k], v)
    for m in (ours, theirs):
        m.eval()
    torch.testing.assert_close(ours(x), theirs(x))


def test_eval_without_running_buffers_uses_batch_statistics():
    ours, theirs = nt.BatchNorm1d(3).eval(), nn.BatchNorm1d(3).eval()
    for m in (ours, theirs):
        m.running_mean = m.running_var = None
    x = torch.randn(5, 3)
    torch.testing.assert_close(ours(x), theirs(x))


def test_reset_running_stats_and_parameters_match_torch():
    ours, theirs = nt.BatchNorm1d(3), nn.BatchNorm1d(3)
    for m in (ours, theirs):
        m(torch.randn(4, 3))
        with torch.no_grad():
            m.weight.add_(1)
    for reset in ("reset_running_stats", "reset_parameters"):
        for m in (ours, theirs):
            getattr(m, reset)()
        for k, v in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[k], v), (reset, k)


def test_convert_sync_batchnorm_matches_torch_s_structure():
    model = nn.Sequential(nt.BatchNorm2d(3, bias=False), nn.Sequential(nn.BatchNorm1d(2)))
    converted = nt.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[0], nt.SyncBatchNorm) and converted[0].bias is None
    assert isinstance(converted[1][0], nt.SyncBatchNorm)
    assert converted[0].weight is model[0].weight
    assert list(converted.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("make, shape", [
    (lambda m: m.BatchNorm2d(3), (4, 3, 2, 2)),
    (lambda m: m.InstanceNorm1d(3, affine=True), (2, 3, 5)),
    (lambda m: m.GroupNorm(2, 4), (3, 4, 5)),
    (lambda m: m.LayerNorm([3, 4]), (2, 3, 4)),
    (lambda m: m.LayerNorm(4, bias=False), (5, 4)),
    (lambda m: m.RMSNorm(4), (5, 4)),
])
@pytest.mark.parametrize("training", [True, False])
def test_gradient_penalty_matches_torch(make, shape, training):
    """A WGAN-GP style penalty, ‖∂out/∂x‖², differentiated again: every parameter's and the
    input's second-order gradients are torch.nn's (float64)."""
    torch.manual_seed(0)
    ours, theirs = make(nt).double().train(training), make(nn).double().train(training)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
        ours.load_state_dict(theirs.state_dict())
    x = torch.randn(shape, dtype=torch.float64)
    v = torch.randn(shape, dtype=torch.float64)
    grads = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_()
        dx, = torch.autograd.grad((m(xi) * v).sum(), xi, create_graph=True)
        penalty = dx.square().sum()
        grads.append(torch.autograd.grad(penalty, [xi, *m.parameters()], allow_unused=True,
                                         materialize_grads=True))   # bias: unused, zero
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make, shape", [
    (lambda m: m.BatchNorm1d(4), (5, 4)),
    (lambda m: m.InstanceNorm1d(4, affine=True, track_running_stats=True), (2, 4, 5)),
    (lambda m: m.GroupNorm(2, 4), (3, 4, 5)),
    (lambda m: m.LayerNorm(4), (5, 4)),
    (lambda m: m.RMSNorm(4), (5, 4)),
])
def test_torch_compile_matches_torch(make, shape):
    """torch.compile (its graph capture and autograd tracing: the aot_eager backend, which needs no
    C++ compiler) runs each layer without a warning: outputs, gradients, running statistics and
    eval outputs are torch.nn's."""
    torch.manual_seed(0)
    ours, theirs = make(nt), make(nn)
    compiled = torch.compile(ours, backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):
            x = (torch.randn(shape) * 2 + 1).requires_grad_()
            xb = x.detach().clone().requires_grad_()
            ya, yb = compiled(x), theirs(xb)
            torch.testing.assert_close(ya, yb)
            ya.square().sum().backward()
            yb.square().sum().backward()
            torch.testing.assert_close(x.grad, xb.grad, rtol=1e-4, atol=1e-5)
        ours.eval(), theirs.eval()
        x = torch.randn(shape)
        torch.testing.assert_close(compiled(x), theirs(x))
    assert not caught, [str(w.message) for w in caught]
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make, shape", [
    (lambda m: m.BatchNorm1d(4), (5, 4)),
    (lambda m: m.InstanceNorm1d(4, affine=True), (2, 4, 5)),
    (lambda m: m.GroupNorm(2, 4), (3, 4, 5)),
    (lambda m: m.LayerNorm(4), (5, 4)),
    (lambda m: m.RMSNorm(4), (5, 4)),
])
def test_torch_export_matches_torch(make, shape):
    """torch.export (for deployment) captures each layer in eval mode as normlib's own ops, not
    torch's norm kernels, and the exported program computes torch.nn's output."""
    torch.manual_seed(0)
    ours, theirs = make(nt).eval(), make(nn).eval()
    x = torch.randn(shape) * 2 + 1
    program = torch.export.export(ours, (x,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert ops and not {op for op in ops if "norm" in op} - {"aten.linalg_vector_norm.default"}
    torch.testing.assert_close(program.module()(x), theirs(x))
