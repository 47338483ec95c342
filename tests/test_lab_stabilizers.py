"""normlib.lab.stabilizers: inverted dropout against torch.nn.Dropout's statistics, clipping against
torch.nn.utils.clip_grad_norm_ / clip_grad_value_, the small-data split, the MLP and its train loop."""
import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as hs

import normlib.torch as nt
from normlib import lab
from normlib.lab import stabilizers as st


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics_match_torch(p):
    n = 200_000
    x = torch.full((n,), 3.0)
    ours = st.dropout(x, p, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    theirs = torch.nn.Dropout(p)(x)
    tol = 5 * math.sqrt(p * (1 - p) / n)                  # 5 binomial standard errors
    for y in (ours, theirs):
        assert abs((y == 0).float().mean().item() - p) < tol                 # fraction dropped
        kept = y[y != 0]
        torch.testing.assert_close(kept, torch.full_like(kept, 3.0 / (1 - p)))  # 1/(1-p) scaling
        sem = 3.0 * math.sqrt(p / (1 - p) / n)            # std of y is x*sqrt(p/(1-p))
        assert abs(y.mean().item() - 3.0) < 5 * sem                          # mean preserved
        assert abs(y.var().item() / (9.0 * p / (1 - p)) - 1) < 0.05          # variance formula


def test_dropout_backward_matches_torch_semantics():
    x = torch.randn(64, 32, requires_grad=True)
    y = st.dropout(x, 0.3, generator=torch.Generator().manual_seed(0))
    y.sum().backward()
    dropped = y == 0
    assert torch.all(x.grad[dropped] == 0)
    torch.testing.assert_close(x.grad[~dropped], torch.full_like(x.grad[~dropped], 1 / 0.7))
    x2 = x.detach().clone().requires_grad_()
    torch.manual_seed(2)
    y2 = torch.nn.functional.dropout(x2, 0.3)
    y2.sum().backward()
    assert torch.all(x2.grad[y2 == 0] == 0)
    torch.testing.assert_close(x2.grad[y2 != 0], torch.full_like(x2.grad[y2 != 0], 1 / 0.7))


def test_dropout_eval_and_edge_cases():
    x = torch.randn(10, 5)
    module = st.Dropout(0.5).eval()
    assert module(x) is x and torch.nn.Dropout(0.5).eval()(x).equal(x)
    assert st.dropout(x, 0.0) is x
    assert torch.all(st.dropout(x, 1.0) == 0) and torch.all(torch.nn.functional.dropout(x, 1.0) == 0)
    assert "p=0.25" in repr(st.Dropout(0.25))
    with pytest.raises(ValueError, match="between 0 and 1"):
        st.dropout(x, 1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        torch.nn.Dropout(-0.1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        st.Dropout(-0.1)


# ---------------------------------------------------------------- gradient clipping
def _two_models_with_grads(seed, scale):
    torch.manual_seed(seed)
    a = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    b = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    b.load_state_dict(a.state_dict())
    x = torch.randn(11, 7) * scale
    for m in (a, b):
        (m(x) ** 2).sum().backward()
    return a, b


@given(seed=hs.integers(0, 10_000), scale=hs.floats(0.01, 100.0),
       max_norm=hs.floats(1e-3, 1e3))
def test_clip_grad_norm_matches_torch(seed, scale, max_norm):
    a, b = _two_models_with_grads(seed, scale)
    ours = st.clip_grad_norm(a.parameters(), max_norm)
    theirs = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
    torch.testing.assert_close(ours, theirs)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert st.grad_norm(a.parameters()) <= max_norm * (1 + 1e-5)


@given(seed=hs.integers(0, 10_000), scale=hs.floats(0.01, 100.0), value=hs.floats(1e-4, 10.0))
def test_clip_grad_value_matches_torch(seed, scale, value):
    a, b = _two_models_with_grads(seed, scale)
    st.clip_grad_value(a.parameters(), value)
    torch.nn.utils.clip_grad_value_(b.parameters(), value)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad)
        assert p.grad.abs().max() <= value


def test_clip_by_norm_keeps_the_direction_and_by_value_does_not():
    g = torch.tensor([10.0, 0.1])
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    p.grad, q.grad = g.clone(), g.clone()
    assert st.clip_grad_norm([p], 1.0).item() == pytest.approx(g.norm().item())
    st.clip_grad_value([q], 1.0)
    cos = torch.nn.functional.cosine_similarity
    assert cos(p.grad, g, dim=0) > 0.9999 and p.grad.norm() == pytest.approx(1.0, rel=1e-5)
    assert cos(q.grad, g, dim=0) < 0.999 and torch.equal(q.grad, torch.tensor([1.0, 0.1]))


def test_grad_norm_is_the_global_norm_and_skips_missing_grads():
    p, q, r = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    p.grad, q.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    assert st.grad_norm([p, q, r]).item() == pytest.approx(5.0)
    assert st.grad_norm([r]).item() == 0.0


# ---------------------------------------------------------------- overfitting setup and models
def test_few_digits_is_balanced_and_keeps_the_test_set():
    full = lab.digits()
    d = st.few_digits(per_class=7, seed=3)
    assert d.x_train.shape == (70, 64) and torch.equal(d.x_test, full.x_test)
    assert torch.equal(torch.bincount(d.y_train), torch.full((10,), 7))
    assert not torch.equal(d.x_train, st.few_digits(per_class=7, seed=4).x_train)
    rows = {tuple(r.tolist()) for r in full.x_train}     # a subset of the training split
    assert all(tuple(r.tolist()) in rows for r in d.x_train[:10])


def test_mlp_layouts():
    plain = st.mlp([8, 16, 16, 3])
    assert [type(m).__name__ for m in plain] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    hidden = st.mlp([8, 16, 16, 3], batch_norm=True, dropout=0.5)
    assert [type(m) for m in hidden][:4] == [torch.nn.Linear, nt.BatchNorm1d, torch.nn.ReLU,
                                             torch.nn.Dropout]
    assert hidden[0].bias is None and hidden[-1].bias is not None
    head = st.mlp([8, 16, 16, 3], batch_norm=True, dropout=0.5, dropout_where="head")
    kinds = [type(m) for m in head]
    assert kinds.count(torch.nn.Dropout) == 1 and kinds[-2] is torch.nn.Dropout
    with pytest.raises(ValueError, match="dropout_where"):
        st.mlp([8, 4, 3], dropout=0.5, dropout_where="input")


def test_train_records_grad_norm_before_clipping_and_clips():
    d = st.few_digits(per_class=5)
    norms = {}
    for clip in (None, "norm"):
        torch.manual_seed(0)
        model = st.mlp([64, 32, 10])
        hist = st.train(model, d, steps=5, lr=0.1, clip=clip, max_norm=1e-3, seed=0)
        norms[clip] = hist["grad_norm"]
        assert len(hist["grad_norm"]) == 5 and hist["test_acc"]
    assert norms[None][0] == norms["norm"][0] > 1e-3        # recorded before clipping
    with pytest.raises(ValueError, match="clip must be"):
        st.train(st.mlp([64, 10]), d, steps=1, lr=0.1, clip="both")


def test_train_stops_on_a_non_finite_loss():
    d = st.few_digits(per_class=5)
    model = st.mlp([64, 10])
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    hist = st.train(model, d, steps=50, lr=0.1)
    assert hist["diverged"] and len(hist["loss"]) == 1


def test_module_input_set_modes_and_recompute():
    torch.manual_seed(0)
    model = st.mlp([6, 8, 8, 3], batch_norm=True, dropout=0.5)
    x = torch.randn(64, 6)
    model.train()
    for _ in range(5):
        model(x)
    bn2 = [m for m in model if isinstance(m, nt.BatchNorm1d)][1]
    before = bn2.running_var.clone()
    st.set_modes(model, dropout=True, batch_norm=False)
    assert model[3].training and not bn2.training and not model[0].training
    noisy = st.module_input(model, bn2, x)
    assert torch.equal(bn2.running_var, before)                 # eval BN: stats untouched
    st.set_modes(model, dropout=False, batch_norm=False)
    clean = st.module_input(model, bn2, x)
    assert not torch.equal(noisy, clean)
    torch.testing.assert_close(clean, model[4](model[3](model[2](model[1](model[0](x))))))
    st.recompute_batch_norm(model, x, batch_size=32)
    assert not model.training and bn2.momentum == 0.1
    # the cumulative average over the two batches, each normalized by its own batch statistics
    ref = st.set_modes(copy.deepcopy(model), dropout=False, batch_norm=True)
    ref_bn2 = [m for m in ref if isinstance(m, nt.BatchNorm1d)][1]
    z = [st.module_input(ref, ref_bn2, x[i:i + 32]) for i in (0, 32)]
    expected = (z[0].var(0) + z[1].var(0)) / 2                 # unbiased, as PyTorch stores
    torch.testing.assert_close(bn2.running_var, expected, rtol=1e-4, atol=1e-6)
