"""Tests for normlib.lab.ics: each measurement against a case solved by hand."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from normlib import lab
from normlib.lab import ics


def test_noisy_norm_draws_shift_and_scale_in_the_documented_ranges():
    torch.manual_seed(0)
    noisy = ics.NoisyNorm(nn.Identity())
    zeros, ones = torch.zeros(64, 50), torch.ones(64, 50)
    for _ in range(20):
        m = noisy(zeros)                        # s * 0 + m = m
        mu = m.mean()
        assert -0.6 < mu < 0.6 and (m - mu).abs().max() < 0.2 + 1e-6
        s_plus_m = noisy(ones)
        assert 0.3 < (s_plus_m.mean() - 0.0) < 2.0
    # redrawn every call: two calls on the same input differ
    assert not torch.equal(noisy(zeros), noisy(zeros))
    # the scale: with huge inputs, output / input ~ s ~ N(sigma, 0.1²), sigma in [1, 1.25]
    big = torch.full((200, 200), 1e6)
    s = noisy(big) / 1e6
    assert 0.95 < s.mean() < 1.3 and 0.07 < s.std() < 0.13
    noisy.eval()
    x = torch.randn(8, 5)
    assert torch.equal(noisy(x), x)


def test_add_noise_wraps_every_hidden_norm_slot():
    model = ics.add_noise(lab.MLP([6, 5, 4, 3], norm="batch"))
    wrapped = [m for m in model if isinstance(m, ics.NoisyNorm)]
    assert len(wrapped) == 2 and all(hasattr(w.inner, "running_mean") for w in wrapped)
    assert model(torch.randn(7, 6)).shape == (7, 3)


def test_restored_puts_back_parameters_and_running_statistics():
    model = lab.MLP([4, 8, 2], norm="batch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with ics.restored(model):
        model(torch.randn(16, 4) * 5 + 3)                  # moves the running statistics
        with torch.no_grad():
            model[0].weight.add_(1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_ics_matches_the_hand_computed_gradient_shift():
    # f(x) = w2 * w1 * x, L = (f - y)^2; layer 2's gradient before and after w1's SGD step
    w1, w2 = nn.Parameter(torch.tensor(0.7, dtype=torch.float64)), \
        nn.Parameter(torch.tensor(-1.3, dtype=torch.float64))
    x, y, lr = 1.5, 0.4, 0.1
    loss_fn = lambda: (w2 * w1 * x - y) ** 2
    dist, cos = ics.ics(loss_fn, [[w1], [w2]], lr)
    a, b = 0.7, -1.3
    g1 = 2 * (b * a * x - y) * b * x
    a_new = a - lr * g1
    g2, g2_new = 2 * (b * a * x - y) * a * x, 2 * (b * a_new * x - y) * a_new * x
    assert dist.shape == (1,) and dist[0] == pytest.approx(abs(g2 - g2_new), rel=1e-12)
    assert cos[0] == pytest.approx(math.copysign(1.0, g2 * g2_new), abs=1e-12)
    assert w1.item() == a and w2.item() == b                   # weights put back


def test_landscape_on_a_quadratic():
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    loss_fn = lambda: 0.5 * w @ a @ w
    etas = [0.1, 0.3]
    losses, change, gnorm = ics.landscape(loss_fn, [w], etas)
    w0 = w.detach().clone()
    g = a @ w0
    for k, eta in enumerate(etas):
        w_eta = w0 - eta * g
        assert losses[k] == pytest.approx(float(0.5 * w_eta @ a @ w_eta), rel=1e-12)
        assert change[k] == pytest.approx(float(eta * (a @ g).norm()), rel=1e-12)
    assert gnorm == pytest.approx(float(g.norm()), rel=1e-12)
    assert torch.equal(w.detach(), w0)


def test_layer_groups_follow_the_layers():
    model = lab.MLP([6, 5, 4, 3], norm="batch")
    groups = ics.layer_groups(model)
    assert len(groups) == 3
    assert groups[0][0] is model[0].weight and groups[0][1] is model[1].weight
    assert groups[-1] == [model[-1].weight, model[-1].bias]
    noisy = ics.add_noise(lab.MLP([6, 5, 4, 3], norm="batch"))
    assert [len(g) for g in ics.layer_groups(noisy)] == [3, 3, 2]


def test_deep_linear_network_is_linear_without_bn():
    torch.manual_seed(0)
    model = ics.DeepLinear(depth=5, width=4)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(model(2 * x - 3 * y), 2 * model(x) - 3 * model(y))
    bn = ics.DeepLinear(depth=5, width=4, norm="batch")
    assert sum(isinstance(m, nn.Linear) for m in bn) == 5 and len(bn) == 9
    with pytest.raises(ValueError, match="DeepLinear"):
        ics.DeepLinear(norm="layer")


def test_train_dln_decreases_the_loss_and_measures_every_layer():
    torch.manual_seed(0)
    x, y = ics.linear_task(n=64, dim=4)
    model = ics.DeepLinear(depth=4, width=4)
    out = ics.train_dln(model, x, y, steps=30, lr=0.01, measure_every=10)
    assert out["loss"][-1] < out["loss"][0]
    assert out["ics_cos"].shape == (3, 3) and np.all(np.abs(out["ics_cos"]) <= 1 + 1e-6)


def test_percentiles_drift_and_steps_to_reach():
    pct = np.zeros((4, 3, 2))
    pct[:, 1, 0] = [0, 1, 3, 2]                  # one curve moves by 3, everything else stays
    assert ics.percentile_drift(pct) == pytest.approx(3 / 6)
    assert ics.percentile_drift(pct, start=2) == pytest.approx(1 / 6)
    assert ics.steps_to_reach([0, 10, 20], [0.1, 0.85, 0.9], 0.8) == 10
    assert ics.steps_to_reach([0, 10], [0.1, 0.2], 0.8) == math.inf


def test_unit_percentiles_use_batch_statistics_and_leave_buffers_alone():
    torch.manual_seed(0)
    model = lab.MLP([5, 7, 3], norm="batch")
    x = torch.randn(101, 5) * 2 + 1
    before = model[1].running_mean.clone()
    pct = ics.unit_percentiles(model, x)
    assert torch.equal(model[1].running_mean, before)
    with torch.no_grad():
        a = ((model[0](x) - model[0](x).mean(0)) / model[0](x).std(0, unbiased=False)).numpy()
    np.testing.assert_allclose(pct, np.percentile(a, ics.PERCENTILES, axis=0), atol=1e-4)
    assert pct.shape == (3, 7) and np.all(pct[0] < pct[1]) and np.all(pct[1] < pct[2])


def test_figure1_run_records_what_it_says():
    data = lab.digits()
    run = ics.figure1_run(data, norm="batch", steps=40, track_every=20, seed=0)
    assert list(run["step"]) == [0, 20, 40]
    assert run["pct"].shape == (3, 3, 100) and run["test_acc"].shape == (3,)


def test_he_init_scales_the_weight_std():
    layer = nn.Linear(400, 300)
    ics.he_init_(layer, gain=0.5)
    assert layer.weight.std().item() == pytest.approx(0.5 * math.sqrt(2 / 400), rel=0.02)
    assert torch.equal(layer.bias, torch.zeros(300))
