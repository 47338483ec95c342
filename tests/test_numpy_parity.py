"""normlib.numpy against torch.nn.functional / torch.nn run side by side: the gaps a reader would hit.

torch is only the oracle here; normlib.numpy itself imports no torch (see test_numpy.py).
"""
import numpy as np
import pytest

import normlib.numpy as nn_

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(a):
    """A float64/float16 tensor copy of a NumPy array (torch refuses negative strides)."""
    return torch.tensor(np.ascontiguousarray(a))


# --- running buffers: both or neither, checked before any state changes ----------------------------

@pytest.mark.parametrize("call", [nn_.batch_norm, nn_.instance_norm], ids=["batch", "instance"])
@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_one_running_buffer_alone_is_refused_before_any_update(rng, call, which):
    x = rng.normal(size=(4, 3, 5))
    with pytest.raises(ValueError, match="running_mean and running_var"):
        F.batch_norm(_t(x), *(( _t(np.zeros(3)), None) if which == "running_mean"
                              else (None, _t(np.ones(3)))), training=True)
    buf = np.full(3, 0.5)
    with pytest.raises(ValueError, match="running_mean and running_var.*both"):
        call(x, **{which: buf})
    np.testing.assert_array_equal(buf, 0.5)


@pytest.mark.parametrize("call", [nn_.batch_norm, nn_.instance_norm], ids=["batch", "instance"])
@pytest.mark.parametrize("bad", ["list", "int", "read-only"])
def test_running_buffers_that_cannot_be_updated_in_place_are_refused(rng, call, bad):
    x = rng.normal(size=(4, 3, 5)) * 5 + 3
    rm, rv = np.zeros(3), np.ones(3)
    if bad == "list":
        rm = [0.0, 0.0, 0.0]
    elif bad == "int":
        rm, rv = np.zeros(3, np.int64), np.ones(3, np.int64)
    else:
        rv.flags.writeable = False
    with pytest.raises(ValueError, match="running_(mean|var)"):
        call(x, running_mean=rm, running_var=rv)
    np.testing.assert_array_equal(rm, 0)                  # nothing updated before the error


def test_eval_accepts_read_only_running_buffers(rng):
    x = rng.normal(size=(4, 3))
    rm, rv = np.zeros(3), np.ones(3)
    rm.flags.writeable = rv.flags.writeable = False
    y, _ = nn_.batch_norm(x, running_mean=rm, running_var=rv, training=False)
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5))


@pytest.mark.parametrize("call", [
    lambda x, **k: nn_.batch_norm(x, running_mean=np.zeros(3), running_var=np.ones(3), **k),
    lambda x, **k: nn_.instance_norm(x, running_mean=np.zeros(3), running_var=np.ones(3), **k),
], ids=["batch", "instance"])
def test_functional_momentum_none_is_a_clear_error(rng, call):
    """torch.nn.functional takes a float momentum; None (cumulative average) is a module option."""
    with pytest.raises(TypeError):
        F.batch_norm(_t(np.zeros((4, 3))), _t(np.zeros(3)), _t(np.ones(3)), training=True,
                     momentum=None)
    with pytest.raises(ValueError, match="momentum=None.*module"):
        call(rng.normal(size=(4, 3, 5)), momentum=None)


def test_eval_without_running_buffers_raises_like_torch(rng):
    x = rng.normal(size=(4, 3))
    with pytest.raises(RuntimeError):
        F.batch_norm(_t(x), None, None, training=False)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        nn_.batch_norm(x, training=False)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        nn_.instance_norm(x[..., None].repeat(2, -1), use_input_stats=False)


# --- gradients: dy must have x's shape; parameter gradients in the parameter's dtype ------------

def test_dy_of_another_shape_is_refused_not_reshaped(rng):
    x = rng.normal(size=(4, 3))
    _, cache = nn_.batch_norm(x)
    with pytest.raises(ValueError, match=r"dy has shape \(3, 4\).*\(4, 3\)"):
        nn_.batch_norm_backward(np.ones((3, 4)), cache)      # same size: a reshape would pass
    _, cache = nn_.normalize(x, (0,))
    with pytest.raises(ValueError, match=r"dxhat has shape \(1, 3\)"):
        nn_.normalize_backward(np.ones((1, 3)), cache)


def test_dy_of_another_dtype_gives_gradients_in_the_input_dtype(rng):
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    _, cache = nn_.layer_norm(x, (5,), np.ones(5, np.float32), np.zeros(5, np.float32))
    dx, dw, db = nn_.layer_norm_backward(rng.normal(size=x.shape), cache)          # float64 dy
    assert dx.dtype == dw.dtype == db.dtype == np.float32
    again = nn_.layer_norm_backward(rng.normal(size=x.shape), cache)
    assert all(a.dtype == np.float32 for a in again)                            # same cache twice


CASES = {
    "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                   lambda x, w, b: nn_.batch_norm(x, w, b), nn_.batch_norm_backward),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (5,), w, b),
                   lambda x, w, b: nn_.layer_norm(x, (5,), w, b), nn_.layer_norm_backward),
    "group_norm": (lambda x, w, b: F.group_norm(x, 3, w, b),
                   lambda x, w, b: nn_.group_norm(x, 3, w, b), nn_.group_norm_backward),
    "instance_norm": (lambda x, w, b: F.instance_norm(x, weight=w, bias=b),
                      lambda x, w, b: nn_.instance_norm(x, w, b), nn_.instance_norm_backward),
}


@pytest.mark.parametrize("name", CASES)
def test_float16_gradients_are_float16_and_match_torch(rng, name):
    tf, nf, nb = CASES[name]
    feat = 5 if name == "layer_norm" else 3
    x = (rng.normal(size=(8, 3, 5)) * 2 + 3).astype(np.float16)
    w, b = (rng.normal(size=feat).astype(np.float16) for _ in range(2))
    g = rng.normal(size=x.shape).astype(np.float16)
    xt, wt, bt = (_t(a).requires_grad_() for a in (x, w, b))
    tf(xt, wt, bt).backward(_t(g))
    y, cache = nf(x, w, b)
    dx, dw, db = nb(g, cache)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float16
    for got, want in [(dx, xt.grad), (dw, wt.grad), (db, bt.grad)]:
        np.testing.assert_allclose(got.astype(np.float32), want.float().numpy(), rtol=2e-2, atol=2e-2)


def test_rms_norm_float16_weight_gradient_is_float16(rng):
    x = rng.normal(size=(4, 6)).astype(np.float16)
    w = rng.normal(size=6).astype(np.float16)
    xt, wt = _t(x).requires_grad_(), _t(w).requires_grad_()
    F.rms_norm(xt, (6,), wt).sum().backward()
    _, cache = nn_.rms_norm(x, (6,), w)
    dx, dw = nn_.rms_norm_backward(np.ones_like(x), cache)
    assert dx.dtype == dw.dtype == np.float16
    np.testing.assert_allclose(dw.astype(np.float32), wt.grad.float().numpy(), rtol=1e-2, atol=1e-2)


def test_module_gradients_take_the_parameter_dtype(rng):
    m = nn_.BatchNorm(3, dtype=np.float16)
    m(rng.normal(size=(4, 3)).astype(np.float16))
    m.backward(np.ones((4, 3), np.float16))
    assert {k: g.dtype for k, g in m.gradients().items()} == {"weight": np.float16, "bias": np.float16}


@pytest.mark.parametrize("w, b", [(True, False), (False, True), (False, False)])
def test_absent_weight_or_bias_gets_none_gradient(rng, w, b):
    x = rng.normal(size=(4, 3, 5))
    wt = _t(np.ones(3)).requires_grad_() if w else None
    bt = _t(np.zeros(3)).requires_grad_() if b else None
    xt = _t(x).requires_grad_()
    F.batch_norm(xt, None, None, wt, bt, training=True).pow(2).sum().backward()
    y, cache = nn_.batch_norm(x, np.ones(3) if w else None, np.zeros(3) if b else None)
    dx, dw, db = nn_.batch_norm_backward(2 * y, cache)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-12)
    assert (dw is None) == (not w) and (db is None) == (not b)


# --- input dtypes and shapes --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.complex128, np.bool_])
@pytest.mark.parametrize("call", [
    lambda x: nn_.batch_norm(x), lambda x: nn_.layer_norm(x, (4,)), lambda x: nn_.group_norm(x, 3),
    lambda x: nn_.instance_norm(x), lambda x: nn_.rms_norm(x, (4,)), lambda x: nn_.normalize(x, (2,)),
], ids=["batch", "layer", "group", "instance", "rms", "core"])
def test_complex_and_bool_input_are_refused(call, dtype):
    """torch refuses them; a silent cast would drop the imaginary part."""
    x = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    with pytest.raises(ValueError, match="real floating"):
        call(x)


@pytest.mark.parametrize("dtype, torch_dtype", [(np.float16, "float16"), (np.float32, "float32"),
                                                 (np.float64, "float64")])
def test_rms_norm_default_eps_matches_torch(dtype, torch_dtype):
    """eps=None: finfo of the compute dtype, so float16 uses float32's eps as torch does on CPU."""
    x = np.full((2, 4), 1e-4, dtype)
    want = F.rms_norm(_t(x), (4,)).float().numpy()
    np.testing.assert_allclose(nn_.rms_norm(x, (4,))[0].astype(np.float32), want, rtol=1e-3)
    np.testing.assert_allclose(nn_.RMSNorm(4, dtype=dtype)(x).astype(np.float32), want, rtol=1e-3)


@pytest.mark.parametrize("affine, track", [(False, False), (True, True)])
def test_instance_norm_module_takes_unbatched_c_l_input(rng, affine, track):
    """torch.nn.InstanceNorm1d accepts (C, L) as one sample; so does InstanceNorm on 2-d input."""
    x = rng.normal(size=(3, 7)) * 2 + 1
    g = rng.normal(size=x.shape)
    tm = torch.nn.InstanceNorm1d(3, affine=affine, track_running_stats=track, dtype=torch.float64)
    m = nn_.InstanceNorm(3, affine=affine, track_running_stats=track, dtype=np.float64)
    xt = _t(x).requires_grad_()
    yt = tm(xt)
    yt.backward(_t(g))
    y = m(x)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(m.backward(g), xt.grad.numpy(), atol=1e-12)
    if track:
        np.testing.assert_allclose(m.running_var, tm.running_var.numpy(), atol=1e-12)
        tm.eval(), m.eval()
        np.testing.assert_allclose(m(x), tm(_t(x)).detach().numpy(), atol=1e-12)


@pytest.mark.parametrize("shape, torch_call, call", [
    ((5, 3), lambda x: torch.nn.BatchNorm1d(3, dtype=torch.float64)(x), lambda x: nn_.BatchNorm(3, dtype=np.float64)(x)),
    ((5, 3, 4), lambda x: torch.nn.BatchNorm1d(3, dtype=torch.float64)(x), lambda x: nn_.BatchNorm(3, dtype=np.float64)(x)),
    ((5, 4), lambda x: torch.nn.GroupNorm(2, 4, dtype=torch.float64)(x), lambda x: nn_.GroupNorm(2, 4, dtype=np.float64)(x)),
    ((6,), lambda x: F.layer_norm(x, (6,)), lambda x: nn_.layer_norm(x, (6,))[0]),
    ((6,), lambda x: F.rms_norm(x, (6,)), lambda x: nn_.rms_norm(x, (6,))[0]),
], ids=["bn (N,C)", "bn (N,C,L)", "gn (N,C)", "ln 1-d", "rms 1-d"])
def test_low_rank_shapes_torch_accepts(rng, shape, torch_call, call):
    x = rng.normal(size=shape)
    np.testing.assert_allclose(call(x), torch_call(_t(x)).detach().numpy(), atol=1e-12)


@pytest.mark.parametrize("layout", ["fortran", "negative strides", "strided"])
def test_non_contiguous_layouts_match_torch_forward_and_backward(rng, layout):
    base = rng.normal(size=(8, 3, 10))
    x = {"fortran": np.asfortranarray(base), "negative strides": base[::-1, :, ::-1],
         "strided": base[::2, :, ::2]}[layout]
    g = rng.normal(size=x.shape[::-1]).T                                 # Fortran-ordered dy
    for name, (tf, nf, nb) in CASES.items():
        if name == "layer_norm":
            continue
        w, b = rng.normal(size=3), rng.normal(size=3)
        xt, wt, bt = (_t(a).requires_grad_() for a in (x, w, b))
        yt = tf(xt, wt, bt)
        yt.backward(_t(g))
        y, cache = nf(x, w, b)
        np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-12, err_msg=name)
        for got, want in zip(nb(g, cache), (xt.grad, wt.grad, bt.grad)):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-11, err_msg=name)


# --- modules over many steps ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["batch", "instance"])
@pytest.mark.parametrize("momentum", [0.1, None, 0.0, 1.0])
@pytest.mark.parametrize("track", [True, False])
def test_modules_follow_torch_over_many_train_and_eval_steps(rng, kind, momentum, track):
    c, spatial = 3, (2, 3)
    cls = torch.nn.BatchNorm2d if kind == "batch" else torch.nn.InstanceNorm2d
    mine = nn_.BatchNorm if kind == "batch" else nn_.InstanceNorm
    tm = cls(c, momentum=momentum, affine=True, track_running_stats=track, dtype=torch.float64)
    m = mine(c, momentum=momentum, affine=True, track_running_stats=track, dtype=np.float64)
    for step in range(20):
        tm.train(step % 5 != 4), m.train(step % 5 != 4)
        x = rng.normal(size=(2 + step % 4, c) + spatial) * 3 + 1
        g = rng.normal(size=x.shape)
        xt = _t(x).requires_grad_()
        tm.zero_grad()
        yt = tm(xt)
        yt.backward(_t(g))
        np.testing.assert_allclose(m(x), yt.detach().numpy(), atol=1e-10)
        np.testing.assert_allclose(m.backward(g), xt.grad.numpy(), atol=1e-10)
        np.testing.assert_allclose(m.dweight, tm.weight.grad.numpy(), atol=1e-10)
        np.testing.assert_allclose(m.dbias, tm.bias.grad.numpy(), atol=1e-10)
    if track:
        np.testing.assert_allclose(m.running_mean, tm.running_mean.numpy(), atol=1e-12)
        np.testing.assert_allclose(m.running_var, tm.running_var.numpy(), atol=1e-12)
        assert m.num_batches_tracked == int(tm.num_batches_tracked)


def test_instance_norm_module_checks_unbatched_channels():
    with pytest.raises(ValueError, match="expected 3 channels on axis 0"):
        nn_.InstanceNorm(3)(np.ones((4, 7)))


def test_integer_or_list_parameters_give_gradients_in_the_input_dtype(rng):
    x = rng.normal(size=(4, 3)).astype(np.float32)
    _, cache = nn_.batch_norm(x, np.array([1, 2, 3]), [0.5, 0.5, 0.5])
    _, dw, db = nn_.batch_norm_backward(rng.normal(size=x.shape), cache)
    assert dw.dtype == db.dtype == np.float32 and np.abs(dw).max() > 0


@pytest.mark.parametrize("shape", [(4,), ()])
def test_groupnorm_module_refuses_input_without_channels(shape):
    """torch's GroupNorm refuses input without (N, C); an IndexError here would name nothing."""
    with pytest.raises(ValueError, match="expected input of shape \\(N, C, \\*\\)"):
        nn_.GroupNorm(2, 4).forward(np.ones(shape))
