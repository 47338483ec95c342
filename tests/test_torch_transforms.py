"""normlib.torch under torch.func transforms and forward-mode AD, against torch.nn (float64):
grad, vmap, jacrev, hessian, jvp, dual tensors, per-sample gradients, model ensembles."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as TF
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, jvp, stack_module_state, vmap

import normlib.torch as nt
from normlib.torch import functional as F

# torch's forward-mode AD loads its jvp decompositions through torch.jit.script, deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

D = dict(dtype=torch.float64)
RM, RV = torch.tensor([0.5, -1.0, 2.0, 0.0], **D), torch.tensor([0.5, 2.0, 3.0, 1.0], **D)
W, B = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), **D)   # γ, β

FUNCTIONS = {   # name: (ours, torch's), each x (N, 4, 5) -> y
    "batch_norm train": (lambda x: F.batch_norm(x, None, None, W, B, True),
                         lambda x: TF.batch_norm(x, None, None, W, B, True)),
    "batch_norm eval": (lambda x: F.batch_norm(x, RM, RV, W, B),
                        lambda x: TF.batch_norm(x, RM, RV, W, B)),
    "instance_norm": (lambda x: F.instance_norm(x, weight=W, bias=B),
                      lambda x: TF.instance_norm(x, weight=W, bias=B)),
    "group_norm": (lambda x: F.group_norm(x, 2, W, B), lambda x: TF.group_norm(x, 2, W, B)),
    "layer_norm": (lambda x: F.layer_norm(x, [4, 5]), lambda x: TF.layer_norm(x, [4, 5])),
    "rms_norm": (lambda x: F.rms_norm(x, [5], eps=1e-6), lambda x: TF.rms_norm(x, [5], eps=1e-6)),
}


def _x(*shape):
    return torch.randn(*shape, **D)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_grad_jacrev_hessian_jvp_match_torch(name):
    torch.manual_seed(0)
    ours, theirs = FUNCTIONS[name]
    x, t = _x(3, 4, 5), _x(3, 4, 5)
    for transform in (lambda f: grad(lambda x: f(x).sin().sum()), jacrev,
                      lambda f: hessian(lambda x: f(x).sin().sum()),
                      lambda f: lambda x: jvp(f, (x,), (t,))):
        torch.testing.assert_close(transform(ours)(x), transform(theirs)(x))


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_vmap_matches_torch(name):
    """vmap over an extra leading axis: each slice is normalized on its own, as torch does."""
    torch.manual_seed(0)
    ours, theirs = FUNCTIONS[name]
    xs = _x(2, 3, 4, 5)
    torch.testing.assert_close(vmap(ours)(xs), vmap(theirs)(xs))


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_forward_mode_dual_tensors_match_torch(name):
    torch.manual_seed(0)
    x, t = _x(3, 4, 5), _x(3, 4, 5)
    tangents = []
    with fwAD.dual_level():
        for fn in FUNCTIONS[name]:
            tangents.append(fwAD.unpack_dual(fn(fwAD.make_dual(x, t))).tangent)
    torch.testing.assert_close(*tangents)


LAYERS = [
    lambda m: m.LayerNorm([4, 5]), lambda m: m.GroupNorm(2, 4), lambda m: m.RMSNorm(5),
    lambda m: m.InstanceNorm1d(4, affine=True), lambda m: m.BatchNorm1d(4).eval(),
]


@pytest.mark.parametrize("make", LAYERS)
def test_per_sample_gradients_match_torch(make):
    """vmap(grad) over the batch with functional_call (Opacus-style per-sample gradients)."""
    torch.manual_seed(0)
    x = _x(6, 1, 4, 5)                                         # 6 samples, each a batch of one
    found = []
    for m in (make(nt).double(), make(nn).double()):
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.linspace(0.5, 1.5, p.numel(), **D).reshape(p.shape))
        params = {k: v.detach() for k, v in m.named_parameters()}

        def loss(p, xi):
            return functional_call(m, p, (xi,)).sin().sum()
        found.append(vmap(grad(loss), in_dims=(None, 0))(params, x))
    assert found[0].keys() == found[1].keys() and found[0]
    for k in found[0]:
        torch.testing.assert_close(found[0][k], found[1][k])


@pytest.mark.parametrize("make", LAYERS)
def test_ensemble_of_models_matches_torch(make):
    """vmap over stacked parameters (torch.func.stack_module_state): one weight per model."""
    torch.manual_seed(0)
    x = _x(3, 4, 5)
    outs = []
    for mod in (nt, nn):
        models = [make(mod).double() for _ in range(3)]
        for i, m in enumerate(models):
            with torch.no_grad():
                for p in m.parameters():
                    p.fill_(0.5 + i)
        params, buffers = stack_module_state(models)
        base = make(mod).double().to("meta")

        def run(p, b):
            return functional_call(base, (p, b), (x,))
        outs.append(vmap(run)(params, buffers))
    torch.testing.assert_close(*outs)


def test_vmap_refuses_to_update_running_stats_like_torch():
    """Training BatchNorm under vmap would write per-slice statistics into one buffer: torch
    refuses, and so do we (torch.func's advice: track_running_stats=False)."""
    xs = _x(2, 3, 4)
    for mod in (nt, nn):
        with pytest.raises(RuntimeError):
            vmap(mod.BatchNorm1d(4).double())(xs)
        assert vmap(mod.BatchNorm1d(4, track_running_stats=False).double())(xs).shape == xs.shape
