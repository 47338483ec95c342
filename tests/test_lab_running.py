"""normlib.lab.running: conventions against torch.nn, precise statistics against a direct average,
Batch Renormalization against its formula, Algorithm 2 BatchNorm against torch.nn."""
import pytest
import torch
from torch import nn

import normlib.torch as nt
from normlib import lab
from normlib.lab import running


@pytest.mark.parametrize("momentum", [0.1, 0.01, 0.5, 1.0])
def test_keras_convention_with_converted_momentum_matches_torch_nn(momentum):
    torch.manual_seed(0)
    ref = nn.BatchNorm1d(3, momentum=momentum)
    keras_m = running.torch_to_keras_momentum(momentum)
    mean, var = torch.zeros(3), torch.ones(3)
    for t in range(30):
        x = torch.randn(8, 3) * (1 + t / 10) + t / 5
        ref(x)
        mean = running.ema_update(mean, x.mean(0), keras_m, convention="keras")
        var = running.ema_update(var, x.var(0, unbiased=True), keras_m, convention="keras")
    assert torch.allclose(mean, ref.running_mean, atol=1e-5)
    assert torch.allclose(var, ref.running_var, atol=1e-5)
    assert running.keras_to_torch_momentum(keras_m) == pytest.approx(momentum)


def test_conventions_reject_bad_input():
    with pytest.raises(ValueError):
        running.torch_to_keras_momentum(1.5)
    with pytest.raises(ValueError):
        running.ema_update(0.0, 1.0, 0.1, convention="tf")


def test_layer_input_stats_is_the_full_batch_statistics_and_leaves_buffers():
    torch.manual_seed(0)
    model = lab.MLP([5, 7, 3], norm="batch")
    x = torch.randn(50, 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (mean, var), = running.layer_input_stats(model.eval(), x)
    z = model[0](x)
    assert torch.allclose(mean, z.mean(0), atol=1e-6)
    assert torch.allclose(var, z.var(0, unbiased=False), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


@pytest.mark.parametrize("bn", [nn.BatchNorm1d, nt.BatchNorm1d])
def test_precise_bn_is_the_average_of_batch_statistics(bn):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), bn(6, momentum=0.3), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(100, 4)
    gen = torch.Generator().manual_seed(1)
    running.precise_bn(model, x, batch_size=20, generator=gen)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model[0](x[order]).reshape(5, 20, 6)
    assert torch.allclose(model[1].running_mean, z.mean(1).mean(0), atol=1e-5)
    assert torch.allclose(model[1].running_var, z.var(1, unbiased=True).mean(0), atol=1e-5)
    assert model[1].momentum == 0.3 and model.training


def test_batch_renorm_formula_and_gradients_treat_r_d_as_constants():
    torch.manual_seed(0)
    layer = running.BatchRenorm1d(4, r_max=1.5, d_max=0.5, dtype=torch.float64)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.0, 1.0, -3.0, 0.2]))
        layer.running_var.copy_(torch.tensor([1.0, 4.0, 0.01, 9.0]))
        layer.weight.uniform_(0.5, 2)
        layer.bias.uniform_(-1, 1)
    mu0, var0 = layer.running_mean.clone(), layer.running_var.clone()
    x = (torch.randn(16, 4, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    y = layer(x)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    sb, sr = (var + layer.eps).sqrt(), (var0 + layer.eps).sqrt()
    r = (sb / sr).clamp(1 / 1.5, 1.5).detach()
    d = ((mean - mu0) / sr).clamp(-0.5, 0.5).detach()
    expected = ((x - mean) / sb * r + d) * layer.weight + layer.bias
    assert torch.allclose(y, expected, atol=1e-10)
    dy = torch.randn_like(y)
    g1 = torch.autograd.grad(y, x, dy, retain_graph=True)[0]
    g2 = torch.autograd.grad(expected, x, dy)[0]
    assert torch.allclose(g1, g2, atol=1e-10)
    n = 16
    assert torch.allclose(layer.running_var, 0.9 * var0 + 0.1 * var.detach() * n / (n - 1))


def test_batch_renorm_with_r1_d0_is_batchnorm_and_eval_is_batchnorm():
    torch.manual_seed(0)
    ours, ref = running.BatchRenorm1d(5, r_max=1.0, d_max=0.0), nn.BatchNorm1d(5)
    for _ in range(3):
        x = torch.randn(8, 5) * 3 + 1
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
    ours.eval(), ref.eval()
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    warm = running.BatchRenorm1d(5, warmup=10)
    assert warm.limits() == (1.0, 0.0)


def test_algorithm2_bn_matches_torch_after_converting_running_var():
    torch.manual_seed(0)
    ref = nn.BatchNorm1d(6)
    ours = running.Algorithm2BatchNorm1d(6, batch_size=4)
    for _ in range(20):
        x = torch.randn(4, 6) * 2 + 1
        assert torch.allclose(ours(x), ref(x), atol=1e-5)     # training: same normalization
    ref.eval(), ours.eval()
    x = torch.randn(10, 6)
    # trained side by side, the two buffers differ only in their convention ...
    assert torch.allclose(ours(x), ref(x), atol=0.2)
    assert not torch.allclose(ours(x), ref(x), atol=1e-3)
    # ... loading torch's buffer as is corrects twice; converting it first gives identical outputs
    loaded = running.Algorithm2BatchNorm1d(6, batch_size=4).eval()
    loaded.load_state_dict(ref.state_dict())
    assert not torch.allclose(loaded(x), ref(x), atol=1e-3)
    state = dict(ref.state_dict(), running_var=ref.running_var * 3 / 4)
    loaded.load_state_dict(state)
    assert torch.allclose(loaded(x), ref(x), atol=1e-5)


def test_swap_batchnorm_keeps_state_and_class_pair_batches():
    torch.manual_seed(0)
    model = lab.MLP([4, 8, 8, 3], norm="batch")
    swapped = running.swap_batchnorm(model, lambda bn: running.BatchRenorm1d(bn.num_features))
    assert sum(isinstance(m, running.BatchRenorm1d) for m in swapped.modules()) == 2
    x = torch.randn(5, 4)
    assert torch.allclose(swapped.eval()(x), model.eval()(x))
    double = running.swap_batchnorm(model.double(), lambda bn: running.BatchRenorm1d(bn.num_features))
    assert all(t.dtype == torch.float64 for t in double.state_dict().values() if t.is_floating_point())
    assert torch.allclose(double.eval()(x.double()), model(x.double()))    # the layer follows the model
    in_eval = running.swap_batchnorm(model.eval(), lambda bn: running.BatchRenorm1d(bn.num_features))
    assert not any(m.training for m in in_eval.modules())                # and the model's mode
    assert torch.allclose(in_eval(x.double()), model(x.double()))     # model is float64 now
    y = torch.arange(40) % 5
    batch = next(running.class_pair_batches(y, 10, torch.Generator().manual_seed(0)))
    assert len(batch) == 10 and len(set(y[batch].tolist())) == 2
