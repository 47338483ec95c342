"""normlib.torch modules vs their torch.nn twins: random shapes and settings (hypothesis), train
steps, running statistics, eval, every gradient (second-order ones too), state_dict both ways,
repr, bad input."""
import inspect

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import normlib.torch as nt

TOL = dict(rtol=1e-7, atol=1e-9)   # float64: the math must agree, not only roughly
# normlib follows torch 2.13, whose batch/instance/group norms take `bias=` and print it in their
# repr; against an older torch (a GPU image, Colab) the comparisons that need it are left out.
TORCH_NORMS_TAKE_BIAS = "bias" in inspect.signature(torch.nn.BatchNorm1d.__init__).parameters


def _randomize(ours, theirs, gen):
    """float64, random affine parameters and running statistics, copied ours -> theirs."""
    ours.double()
    theirs.double()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        if getattr(ours, "running_var", None) is not None:
            ours.running_mean.copy_(torch.randn(ours.running_mean.shape, generator=gen))
            ours.running_var.copy_(torch.rand(ours.running_var.shape, generator=gen) + 0.5)
    theirs.load_state_dict(ours.state_dict())


def _compare(ours, theirs, shape, gen, steps=2):
    """Train steps then eval: outputs, input and parameter gradients, buffers all agree."""
    for training in [True] * steps + [False]:
        ours.train(training)
        theirs.train(training)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        torch.testing.assert_close(ya, yb, **TOL)
        dy = torch.randn(ya.shape, generator=gen, dtype=torch.float64)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad, **TOL)
        for (name, pa), pb in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, **TOL, msg=name)
            pa.grad = pb.grad = None
        _compare_second_order(ours, theirs, x, dy)
        sa, sb = ours.state_dict(), theirs.state_dict()
        assert list(sa) == list(sb)
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], **TOL, msg=k)


def _compare_second_order(ours, theirs, x, dy):
    """A gradient penalty ‖∂(y·dy)/∂x‖², differentiated again: the input's and the parameters'
    gradients agree. (One more forward: in training both sides' running statistics move once
    more, alike.) Where y is affine in x with constant coefficients (eval without γ) the penalty
    may have no graph at all: its gradients are zeros."""
    found = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_()
        wrt = [xi, *m.parameters()]
        dx, = torch.autograd.grad((m(xi) * dy).sum(), xi, create_graph=True)
        penalty = dx.square().sum()
        found.append(torch.autograd.grad(penalty, wrt, allow_unused=True, materialize_grads=True)
                     if penalty.requires_grad else [torch.zeros_like(t) for t in wrt])
    for a, b in zip(*found):
        torch.testing.assert_close(a, b, **TOL)


momenta = st.sampled_from([0.1, 0.5, None])


@given(n=st.integers(2, 6), c=st.integers(1, 5), spatial=st.lists(st.integers(1, 4), max_size=1),
       momentum=momenta, affine=st.booleans(), bias=st.booleans(), track=st.booleans(),
       seed=st.integers(0, 2**16))
def test_batchnorm1d_matches_torch(n, c, spatial, momentum, affine, bias, track, seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    assume(bias or TORCH_NORMS_TAKE_BIAS)
    kw = dict(momentum=momentum, affine=affine, track_running_stats=track)
    ours = nt.BatchNorm1d(c, **kw, bias=bias)
    theirs = torch.nn.BatchNorm1d(c, **kw, **({"bias": bias} if TORCH_NORMS_TAKE_BIAS else {}))
    _randomize(ours, theirs, gen)
    _compare(ours, theirs, (n, c, *spatial), gen)


@given(n=st.integers(1, 4), c=st.integers(1, 5), h=st.integers(2, 5), w=st.integers(1, 5),
       momentum=momenta, affine=st.booleans(), track=st.booleans(), seed=st.integers(0, 2**16))
def test_batchnorm2d_matches_torch(n, c, h, w, momentum, affine, track, seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(momentum=momentum, affine=affine, track_running_stats=track)
    ours, theirs = nt.BatchNorm2d(c, eps=1e-3, **kw), torch.nn.BatchNorm2d(c, eps=1e-3, **kw)
    _randomize(ours, theirs, gen)
    _compare(ours, theirs, (n, c, h, w), gen)


@given(n=st.integers(1, 4), c=st.integers(1, 4), spatial=st.lists(st.integers(2, 4), min_size=1,
       max_size=2), momentum=st.sampled_from([0.1, 0.7]), affine=st.booleans(),
       track=st.booleans(), seed=st.integers(0, 2**16))
def test_instancenorm_matches_torch(n, c, spatial, momentum, affine, track, seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    cls = {1: (nt.InstanceNorm1d, torch.nn.InstanceNorm1d),
           2: (nt.InstanceNorm2d, torch.nn.InstanceNorm2d)}[len(spatial)]
    kw = dict(momentum=momentum, affine=affine, track_running_stats=track)
    ours, theirs = cls[0](c, **kw), cls[1](c, **kw)
    _randomize(ours, theirs, gen)
    _compare(ours, theirs, (n, c, *spatial), gen)


@given(lead=st.lists(st.integers(1, 4), max_size=2), shape=st.lists(st.integers(1, 6), min_size=1,
       max_size=2), affine=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_layernorm_matches_torch(lead, shape, affine, bias, seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(elementwise_affine=affine, bias=bias)
    ours, theirs = nt.LayerNorm(shape, **kw), torch.nn.LayerNorm(shape, **kw)
    _randomize(ours, theirs, gen)
    _compare(ours, theirs, (*lead, *shape), gen)


@given(lead=st.lists(st.integers(1, 4), max_size=2), shape=st.lists(st.integers(1, 6), min_size=1,
       max_size=2), eps=st.sampled_from([None, 1e-6, 0.1]), affine=st.booleans(),
       seed=st.integers(0, 2**16))
def test_rmsnorm_matches_torch(lead, shape, eps, affine, seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    ours = nt.RMSNorm(shape, eps=eps, elementwise_affine=affine)
    theirs = torch.nn.RMSNorm(shape, eps=eps, elementwise_affine=affine)
    _randomize(ours, theirs, gen)
    _compare(ours, theirs, (*lead, *shape), gen)


@given(n=st.integers(1, 4), groups=st.integers(1, 4), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 4), max_size=2), affine=st.booleans(),
       seed=st.integers(0, 2**16))
def test_groupnorm_matches_torch(n, groups, per_group, spatial, affine, seed, cpu_path):
    c = groups * per_group
    if per_group * (spatial[0] if spatial else 1) * (spatial[1] if len(spatial) > 1 else 1) == 1:
        spatial = [2]   # one value per group has no variance (torch returns 0, so do we)
    gen = torch.Generator().manual_seed(seed)
    ours, theirs = nt.GroupNorm(groups, c, affine=affine), torch.nn.GroupNorm(groups, c, affine=affine)
    _randomize(ours, theirs, gen)
    _compare(ours, theirs, (n, c, *spatial), gen)


PAIRS = [
    (lambda m: m.BatchNorm1d(4), (3, 4)), (lambda m: m.BatchNorm2d(4), (3, 4, 2, 2)),
    (lambda m: m.BatchNorm3d(4, momentum=None), (2, 4, 2, 2, 2)),
    (lambda m: m.InstanceNorm1d(4), (3, 4, 5)), (lambda m: m.InstanceNorm3d(4, affine=True), (2, 4, 2, 2, 2)),
    (lambda m: m.LayerNorm([4, 2], bias=False), (3, 4, 2)), (lambda m: m.GroupNorm(2, 4), (3, 4, 5)),
    (lambda m: m.RMSNorm(4, eps=1e-6), (3, 4)),
]


@pytest.mark.parametrize("make, shape", PAIRS)
def test_repr_and_state_dict_round_trip_both_ways(make, shape):
    ours, theirs = make(nt), make(torch.nn)
    if TORCH_NORMS_TAKE_BIAS:
        assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(shape)
    theirs(x)                                    # move theirs' running statistics
    ours.load_state_dict(theirs.state_dict())    # theirs -> ours
    for m in (ours, theirs):
        m.eval()
    torch.testing.assert_close(ours(x), theirs(x))
    theirs2 = make(torch.nn)
    theirs2.load_state_dict(ours.state_dict())   # ours -> theirs
    theirs2.eval()
    torch.testing.assert_close(ours(x), theirs2(x))


def test_unbatched_instance_norm_input():
    x = torch.randn(3, 5, 5)
    torch.testing.assert_close(nt.InstanceNorm2d(3)(x), torch.nn.InstanceNorm2d(3)(x))


def test_channels_last_input(cpu_path):
    TOL = dict(rtol=1e-4, atol=1e-5)
    ours, theirs = nt.BatchNorm2d(8), torch.nn.BatchNorm2d(8)
    x = torch.randn(4, 8, 5, 5).to(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, **TOL)
    assert ya.is_contiguous(memory_format=torch.channels_last)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    torch.testing.assert_close(nt.GroupNorm(2, 8)(x), torch.nn.GroupNorm(2, 8)(x), **TOL)


@pytest.mark.parametrize("make, shape", [
    (lambda m: m.BatchNorm2d(4), (2, 4, 3, 5)), (lambda m: m.GroupNorm(2, 4), (2, 4, 3, 5)),
    (lambda m: m.InstanceNorm2d(4, affine=True), (2, 4, 3, 5)),
    (lambda m: m.BatchNorm3d(4), (2, 4, 3, 2, 5)), (lambda m: m.InstanceNorm3d(4), (2, 4, 3, 2, 5)),
])
def test_channels_last_output_layout_is_torch_s(make, shape):
    """Code after the layer may .view() its output: the layout must be the one torch.nn gives
    (BatchNorm and GroupNorm keep channels-last; torch's InstanceNorm returns a contiguous
    tensor), and so must the input's gradient."""
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(shape).to(memory_format=fmt)
    layouts = []
    for m in (make(nt), make(torch.nn)):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(torch.ones_like(y))
        layouts.append([(t.is_contiguous(), t.is_contiguous(memory_format=fmt))
                        for t in (y, xi.grad)])
    assert layouts[0] == layouts[1]


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("make, x, words", [
    (lambda: nt.BatchNorm1d(3), torch.randn(1, 3), "more than 1 value per channel"),
    (lambda: nt.BatchNorm2d(3), torch.randn(1, 3, 1, 1), "more than 1 value per channel"),
    (lambda: nt.BatchNorm2d(3), torch.randn(4, 3), "expected 4D input, got 2D"),
    (lambda: nt.BatchNorm1d(3), torch.randn(4, 5), "expected 3 channels"),
    (lambda: nt.BatchNorm2d(3, momentum=None), torch.randn(2, 4, 3, 3), "expected 3 channels"),
    (lambda: nt.InstanceNorm1d(3, track_running_stats=True), torch.randn(4, 3, 1),
     "more than 1 spatial element"),
    (lambda: nt.InstanceNorm2d(3), torch.randn(4, 5, 2, 2), "expected 3 channels"),
    (lambda: nt.LayerNorm(5), torch.randn(4, 6), "normalized_shape=\\(5\\) must match"),
    (lambda: nt.RMSNorm([2, 3]), torch.randn(4, 3, 2), "must match the last 2 axes"),
    (lambda: nt.GroupNorm(2, 4), torch.randn(4, 6, 3), "expected 4 channels"),
])
def test_bad_input_raises_before_any_state_changes(make, x, words):
    m = make()
    before = _state(m)
    with pytest.raises(ValueError, match=words):
        m(x)
    after = _state(m)
    assert list(before) == list(after)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_groupnorm_refuses_indivisible_channels():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        nt.GroupNorm(4, 6)


def test_eval_batch_of_one_is_fine():
    m = nt.BatchNorm1d(3).eval()
    assert m(torch.randn(1, 3)).shape == (1, 3)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_momentum_semantics(momentum, cpu_path):
    """0.1 weights the new batch; None gives the plain average of all batches so far."""
    m = nt.BatchNorm1d(2, momentum=momentum)
    batches = [torch.randn(16, 2) + i for i in range(3)]
    for b in batches:
        m(b)
    means = torch.stack([b.mean(0) for b in batches])
    if momentum is None:
        want = means.mean(0)
    else:
        want = torch.zeros(2)
        for mu in means:
            want = 0.9 * want + 0.1 * mu
    torch.testing.assert_close(m.running_mean, want)
    want_var = (1 if momentum else 0) * 0.9 ** 3 + sum(
        (0.1 * 0.9 ** (2 - i) if momentum else 1 / 3) * b.var(0, unbiased=True)
        for i, b in enumerate(batches))
    torch.testing.assert_close(m.running_var, want_var)


TWINS = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
         "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm"]


@pytest.mark.parametrize("name", TWINS)
def test_each_layer_is_an_instance_of_its_torch_twin(name):
    """Code that picks layers by type finds ours; the methods that run are still ours."""
    args = (2, 4) if name == "GroupNorm" else (4,)
    m = getattr(nt, name)(*args)
    assert isinstance(m, getattr(torch.nn, name))
    for method in ("__init__", "forward", "extra_repr", "reset_parameters"):
        assert getattr(type(m), method).__module__ == "normlib.torch.modules", method


def test_sync_batchnorm_is_a_torch_batchnorm_but_not_torch_s_sync_batchnorm():
    assert isinstance(nt.SyncBatchNorm(4), torch.nn.modules.batchnorm._BatchNorm)
    # DistributedDataParallel refuses CPU models that hold a torch.nn.SyncBatchNorm
    assert not isinstance(nt.SyncBatchNorm(4), torch.nn.SyncBatchNorm)


def test_freezing_batchnorm_by_type_keeps_running_statistics():
    """The fine-tuning idiom: train the model, but put every nn.BatchNorm2d in eval."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), nt.BatchNorm2d(4), torch.nn.ReLU())
    model(torch.randn(8, 3, 6, 6))                       # running statistics away from 0 and 1
    before = _state(model[1])
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.randn(8, 3, 6, 6)
    y = model(x)
    for k, v in model[1].state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    torch.testing.assert_close(y, model(x))


def test_weight_decay_groups_by_type_cover_every_parameter():
    """minGPT's configure_optimizers: decay Linear weights, not norm parameters nor biases, and
    assert every parameter landed in a group: it failed with layers that were not nn.LayerNorm."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), nt.LayerNorm(8), torch.nn.Linear(8, 8),
                                nt.RMSNorm(8), torch.nn.Conv1d(8, 8, 1), nt.GroupNorm(2, 8),
                                nt.BatchNorm1d(8))
    no_decay_types = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm,
                      torch.nn.modules.batchnorm._BatchNorm)
    decay, no_decay = set(), set()
    for mn, m in model.named_modules():
        for pn, _ in m.named_parameters(recurse=False):
            full = f"{mn}.{pn}" if mn else pn
            if pn == "bias" or isinstance(m, no_decay_types):
                no_decay.add(full)
            elif pn == "weight" and isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)):
                decay.add(full)
    assert decay | no_decay == {n for n, _ in model.named_parameters()}
    assert decay == {"0.weight", "2.weight", "4.weight"}


def test_replace_all_batch_norm_modules_then_vmap_matches_torch():
    """torch.func's helper finds our BatchNorms by type and drops their running statistics; the
    model then runs under vmap (an ensemble of batches) like the same model built from torch.nn."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, dtype=torch.float64)                    # 3 batches of 5
    outs = []
    for m in (nt, torch.nn):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), m.BatchNorm1d(6)).double()
        torch.func.replace_all_batch_norm_modules_(model)
        assert model[1].running_mean is None and not model[1].track_running_stats
        outs.append(torch.func.vmap(model)(x))
    torch.testing.assert_close(outs[0], outs[1], **TOL)


def test_fuse_conv_bn_eval_gives_the_same_output():
    """torch.nn.utils.fusion folds an eval BatchNorm into the convolution before it."""
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 3).double(), nt.BatchNorm2d(4).double()
    gen = torch.Generator().manual_seed(0)
    _randomize(bn, torch.nn.BatchNorm2d(4), gen)
    conv.eval(), bn.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    torch.testing.assert_close(fused(x), bn(conv(x)), **TOL)


def test_swa_update_bn_recomputes_our_running_statistics():
    """torch.optim.swa_utils.update_bn finds BatchNorms by type, resets them and averages the
    statistics over a loader (momentum None): the same buffers as for torch.nn's BatchNorm."""
    torch.manual_seed(0)
    loader = [torch.randn(16, 4, dtype=torch.float64) * 3 + 1 for _ in range(4)]
    states = []
    for m in (nt, torch.nn):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(4, 5), m.BatchNorm1d(5)).double()
        torch.optim.swa_utils.update_bn(loader, model)
        assert model[1].momentum == 0.1 and int(model[1].num_batches_tracked) == len(loader)
        states.append(model[1].state_dict())
    for k in states[1]:
        torch.testing.assert_close(states[0][k], states[1][k], **TOL, msg=k)
