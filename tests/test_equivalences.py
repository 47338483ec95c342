"""Identities between the norms, and the NumPy reference == normlib.torch == torch.nn."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import normlib.numpy as nn_
from normlib.torch import functional as F

DOUBLE = dict(dtype=torch.float64)


@given(n=st.integers(1, 3), c=st.integers(1, 4), hw=st.integers(2, 9), seed=st.integers(0, 999))
def test_group_norm_with_one_group_is_layer_norm_over_c_h_w(n, c, hw, seed):
    x = torch.randn(n, c, hw, generator=torch.Generator().manual_seed(seed), **DOUBLE)
    torch.testing.assert_close(F.group_norm(x, 1), F.layer_norm(x, [c, hw]))


@given(n=st.integers(1, 3), c=st.integers(1, 4), hw=st.integers(2, 9), seed=st.integers(0, 999))
def test_group_norm_with_c_groups_is_instance_norm(n, c, hw, seed):
    x = torch.randn(n, c, hw, generator=torch.Generator().manual_seed(seed), **DOUBLE)
    torch.testing.assert_close(F.group_norm(x, c), F.instance_norm(x))


def test_rms_norm_equals_layer_norm_on_zero_mean_rows():
    x = torch.randn(8, 16, **DOUBLE)
    x = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(F.rms_norm(x, [16], eps=1e-5), F.layer_norm(x, [16], eps=1e-5))
    y = x + 1.0   # and not otherwise: the check above can fail
    assert not torch.allclose(F.rms_norm(y, [16], eps=1e-5), F.layer_norm(y, [16], eps=1e-5))


def test_instance_norm_is_batch_norm_of_each_sample_alone():
    x = torch.randn(3, 4, 10, **DOUBLE)
    per_sample = torch.cat([F.batch_norm(x[i:i + 1], None, None, training=True) for i in range(3)])
    torch.testing.assert_close(F.instance_norm(x), per_sample)


CASES = {  # name: (numpy call, torch call, torch.nn.functional call), arguments (x, w, b)
    "batch_norm": (lambda x, w, b: nn_.batch_norm(x, w, b),
                   lambda F_, x, w, b: F_.batch_norm(x, None, None, w, b, True), (6, 3, 4), (3,)),
    "layer_norm": (lambda x, w, b: nn_.layer_norm(x, (4,), w, b),
                   lambda F_, x, w, b: F_.layer_norm(x, [4], w, b), (6, 3, 4), (4,)),
    "group_norm": (lambda x, w, b: nn_.group_norm(x, 3, w, b),
                   lambda F_, x, w, b: F_.group_norm(x, 3, w, b), (2, 6, 4), (6,)),
    "instance_norm": (lambda x, w, b: nn_.instance_norm(x, w, b),
                      lambda F_, x, w, b: F_.instance_norm(x, None, None, w, b), (2, 3, 5), (3,)),
    "rms_norm": (lambda x, w, b: nn_.rms_norm(x, (4,), w),
                 lambda F_, x, w, b: F_.rms_norm(x, [4], w), (6, 3, 4), (4,)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_numpy_reference_equals_normlib_torch_equals_torch_nn(name):
    np_call, t_call, xshape, fshape = CASES[name]
    rng = np.random.default_rng(1)
    x, w, b, dy = (rng.normal(size=s) for s in (xshape, fshape, fshape, xshape))
    y_np, cache = np_call(x, w, b)
    grads_np = getattr(nn_, name + "_backward")(dy, cache)
    results = []
    for F_ in (F, torch.nn.functional):
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        y = t_call(F_, xt, wt, bt)
        y.backward(torch.tensor(dy))
        results.append((y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad))
    for y_t, dx_t, dw_t, db_t in results:
        np.testing.assert_allclose(y_np, y_t, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads_np[0], dx_t, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(grads_np[1], dw_t, rtol=1e-8, atol=1e-10)
        if name != "rms_norm":
            np.testing.assert_allclose(grads_np[2], db_t.numpy(), rtol=1e-8, atol=1e-10)


def test_numpy_running_statistics_equal_torch_s():
    rng = np.random.default_rng(2)
    bn_np, bn_t = nn_.BatchNorm(3, dtype=np.float64), torch.nn.BatchNorm1d(3).double()
    for _ in range(3):
        x = rng.normal(1, 2, size=(7, 3, 2))
        bn_np(x)
        bn_t(torch.tensor(x))
    np.testing.assert_allclose(bn_np.running_mean, bn_t.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn_np.running_var, bn_t.running_var.numpy(), rtol=1e-12)
    x = rng.normal(size=(4, 3, 2))
    np.testing.assert_allclose(bn_np.eval()(x), bn_t.eval()(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10)
