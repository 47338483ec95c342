"""normlib.numpy: backward vs central finite differences, PyTorch's running-statistics rules,
numerics, and the module classes. No torch here: the reference must stand on its own."""
import threading
from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import normlib.numpy as nn_
import normlib.numpy.core as core


def numerical_grad(f, a, h=1e-6):
    """Central differences of the scalar f() with respect to every entry of `a` (changed in place)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


# name, input shape, feature shape, call(x, w, b), backward
CASES = [
    ("batch_norm 2d", (6, 3), (3,), lambda x, w, b: nn_.batch_norm(x, w, b), nn_.batch_norm_backward),
    ("batch_norm 4d", (3, 2, 3, 2), (2,), lambda x, w, b: nn_.batch_norm(x, w, b),
     nn_.batch_norm_backward),
    ("layer_norm", (4, 5), (5,), lambda x, w, b: nn_.layer_norm(x, (5,), w, b),
     nn_.layer_norm_backward),
    ("layer_norm 2 axes", (2, 3, 4), (3, 4), lambda x, w, b: nn_.layer_norm(x, (3, 4), w, b),
     nn_.layer_norm_backward),
    ("group_norm", (2, 4, 3), (4,), lambda x, w, b: nn_.group_norm(x, 2, w, b),
     nn_.group_norm_backward),
    ("instance_norm", (2, 3, 4), (3,), lambda x, w, b: nn_.instance_norm(x, w, b),
     nn_.instance_norm_backward),
    ("rms_norm", (4, 5), (5,), lambda x, w, b: nn_.rms_norm(x, (5,), w, eps=1e-5),
     lambda dy, c: nn_.rms_norm_backward(dy, c) + (None,)),
]


@pytest.mark.parametrize("name, shape, fshape, call, backward", CASES, ids=[c[0] for c in CASES])
def test_backward_matches_finite_differences(rng, name, shape, fshape, call, backward):
    x = rng.normal(size=shape) * 2 + 0.5
    w = rng.normal(size=fshape)
    b = rng.normal(size=fshape)
    g = rng.normal(size=shape)

    def loss():
        return float((call(x, w, b)[0] * g).sum())

    y, cache = call(x, w, b)
    dx, dw, db = backward(g, cache)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-5, atol=1e-7)
    if db is not None:
        np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-5, atol=1e-7)


def test_eval_mode_batch_norm_backward_matches_finite_differences(rng):
    x = rng.normal(size=(4, 3))
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    g = rng.normal(size=x.shape)
    loss = lambda: float((nn_.batch_norm(x, None, None, rm, rv, training=False)[0] * g).sum())
    _, cache = nn_.batch_norm(x, None, None, rm, rv, training=False)
    dx, dw, db = nn_.batch_norm_backward(g, cache)
    assert dw is None and db is None
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6)


def test_normalize_gives_zero_mean_unit_variance_over_the_axes(rng):
    x = rng.normal(3, 2, size=(5, 4, 6))
    xhat, _ = nn_.normalize(x, (0, 2))
    np.testing.assert_allclose(xhat.mean(axis=(0, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(xhat.var(axis=(0, 2)), 1, atol=1e-4)
    xhat, _ = nn_.normalize(x, (2,), center=False)
    np.testing.assert_allclose((xhat ** 2).mean(axis=2), 1, atol=1e-4)


def test_running_statistics_follow_pytorch(rng):
    """momentum weights the new batch; running_var stores the unbiased variance; output the biased."""
    x = rng.normal(2, 3, size=(10, 4))
    rm, rv = np.zeros(4), np.ones(4)
    y, _ = nn_.batch_norm(x, running_mean=rm, running_var=rv, momentum=0.1)
    np.testing.assert_allclose(rm, 0.9 * 0 + 0.1 * x.mean(0))
    np.testing.assert_allclose(rv, 0.9 * 1 + 0.1 * x.var(0, ddof=1))
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5))


def test_eval_uses_running_variance_without_squaring_it(rng):
    x = rng.normal(size=(3, 2))
    rm, rv = np.array([0.5, -1.0]), np.array([4.0, 0.25])
    y, _ = nn_.batch_norm(x, None, None, rm, rv, training=False, eps=0.0)
    np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv))


def test_instance_norm_running_statistics_average_the_instances(rng):
    x = rng.normal(size=(3, 2, 5))
    rm, rv = np.zeros(2), np.ones(2)
    nn_.instance_norm(x, running_mean=rm, running_var=rv, momentum=0.5)
    np.testing.assert_allclose(rm, 0.5 * x.mean(2).mean(0))
    np.testing.assert_allclose(rv, 0.5 + 0.5 * x.var(2, ddof=1).mean(0))


def test_module_momentum_none_is_the_cumulative_average(rng):
    bn = nn_.BatchNorm(3, momentum=None, dtype=np.float64)
    batches = [rng.normal(i, 1, size=(8, 3)) for i in range(4)]
    for b in batches:
        bn(b)
    np.testing.assert_allclose(bn.running_mean, np.mean([b.mean(0) for b in batches], axis=0))
    assert bn.num_batches_tracked == 4


def test_module_train_eval_and_gradients(rng):
    bn = nn_.BatchNorm(3)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = bn(x)
    dx = bn.backward(np.ones_like(y))
    assert dx.shape == x.shape and set(bn.gradients()) == {"weight", "bias"}
    np.testing.assert_allclose(bn.dbias, 16)
    bn.eval()
    np.testing.assert_allclose(bn(x), (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5),
                               rtol=1e-5)


@pytest.mark.parametrize("x, message", [
    (np.ones((1, 3), np.float32), "more than 1 value per channel"),   # stricter than torch
    (np.ones((4, 3), np.complex64), "real floating"),                  # torch refuses it too
], ids=["one value per channel", "complex"])
def test_module_refuses_bad_input_before_touching_state(x, message):
    bn = nn_.BatchNorm(3)
    with pytest.raises(ValueError, match=message):
        bn(x)
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, 0)


@pytest.mark.parametrize("layer, shape", [
    (lambda: nn_.LayerNorm(4), (3, 4)), (lambda: nn_.RMSNorm(4), (3, 4)),
    (lambda: nn_.GroupNorm(2, 4), (3, 4, 5)), (lambda: nn_.InstanceNorm(4), (3, 4, 5)),
])
def test_other_modules_run_forward_and_backward(rng, layer, shape):
    m = layer()
    x = rng.normal(size=shape).astype(np.float32)
    y = m(x)
    assert m.backward(np.ones_like(y)).shape == x.shape


def test_float32_offset_data_normalizes_accurately(rng):
    """1e3 + 0.1·z: one-pass E[x²] - E[x]² would lose every digit in float32."""
    x64 = 1e3 + 0.1 * rng.normal(size=(64, 256))
    want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    got, _ = nn_.layer_norm(x64.astype(np.float32), (256,))
    assert np.abs(got - want).max() < 1e-2
    x64 = 1e3 + 0.1 * rng.normal(size=(2, 2 ** 18))           # long rows: float32 sums drift more
    want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    got, _ = nn_.layer_norm(x64.astype(np.float32), (2 ** 18,))
    assert np.abs(got - want).max() < 1e-2


def test_float16_input_returns_float16_with_float32_statistics(rng):
    x = (100 + rng.normal(size=(8, 64))).astype(np.float16)
    y, cache = nn_.layer_norm(x, (64,))
    assert y.dtype == np.float16 and cache.norm.xhat.dtype == np.float32
    np.testing.assert_allclose(y.astype(np.float64).std(1), 1, atol=1e-2)


def test_nan_propagates_without_crashing():
    x = np.array([[np.nan, 1.0], [2.0, 3.0], [4.0, 5.0]])
    y, cache = nn_.batch_norm(x)
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1]).all()
    dx, _, _ = nn_.batch_norm_backward(np.ones_like(y), cache)
    assert np.isnan(dx[:, 0]).all()
    y, cache = nn_.layer_norm(x, (2,))                       # the row-parts path
    assert np.isnan(y[0]).all() and np.isfinite(y[1:]).all()
    assert np.isnan(nn_.layer_norm_backward(np.ones_like(y), cache)[0][0]).all()


def test_non_contiguous_input_agrees_with_contiguous(rng):
    """A Fortran-ordered array takes the whole-array passes, a C-ordered one the row parts."""
    x = rng.normal(size=(6, 5, 4))
    w, b, dy = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), rng.normal(size=x.shape)
    y_c, cache_c = nn_.layer_norm(x, (5, 4), w, b)
    y_f, cache_f = nn_.layer_norm(np.asfortranarray(x), (5, 4), w, b)
    np.testing.assert_allclose(y_c, y_f, rtol=1e-12, atol=1e-12)
    for g_c, g_f in zip(nn_.layer_norm_backward(dy, cache_c), nn_.layer_norm_backward(dy, cache_f)):
        np.testing.assert_allclose(g_c, g_f, rtol=1e-10, atol=1e-12)


@contextmanager
def _core_settings(**values):
    """Set normlib.numpy.core's tuning constants (PART_BYTES, THREADS, ...) for a block of code."""
    old = {name: getattr(core, name) for name in values}
    for name, value in values.items():
        setattr(core, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(core, name, value)


@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       trail=st.lists(st.integers(1, 6), min_size=1, max_size=2),
       varying=st.integers(0, 3), center=st.booleans(), part_bytes=st.integers(1, 400),
       threads=st.integers(1, 3), tile_values=st.integers(1, 60), dot_max=st.integers(1, 9),
       seed=st.integers(0, 999))
@example(lead=[3, 2], trail=[4], varying=1, center=True, part_bytes=400, threads=1,
         tile_values=16, dot_max=9, seed=0)      # a tile of 2 periods, 6 rows: 2 rows left over
@example(lead=[5, 3], trail=[2, 3], varying=1, center=False, part_bytes=50, threads=2,
         tile_values=30, dot_max=4, seed=1)      # tiles of 6 rows; 3 parts, the last of 3 rows
def test_row_parts_match_whole_array_passes(lead, trail, varying, center, part_bytes, threads,
                                            tile_values, dot_max, seed):
    """Parts of rows of any size on any number of threads, parameter tiles of any length and row
    sums in any chunks change nothing; the parts and tiles change not even a bit."""
    rng = np.random.default_rng(seed)
    shape = tuple(lead + trail)
    x = rng.normal(3, 2, size=shape)
    axes = tuple(range(len(lead), len(shape)))
    # parameters constant over the leading axes before `start` (like GroupNorm's (1, G, C/G, 1))
    start = min(varying, len(lead))
    pshape = tuple(1 if a < start else s for a, s in enumerate(shape))
    w, b = rng.normal(size=pshape), rng.normal(size=pshape)
    want = core._normalize_any(x, axes, 1e-5, center, w, b)
    with _core_settings(DOT_MAX=dot_max):
        one_part, _ = nn_.normalize(x, axes, center=center, weight=w, bias=b)
        with _core_settings(PART_BYTES=part_bytes, THREADS=threads, TILE_VALUES=tile_values):
            y, cache = nn_.normalize(x, axes, center=center, weight=w, bias=b)
    np.testing.assert_array_equal(y, one_part)
    np.testing.assert_allclose(y, want[0], rtol=1e-10, atol=1e-10)
    for got, ref in zip((cache.mean, cache.var, cache.rstd), want[1:]):
        np.testing.assert_allclose(got, np.broadcast_to(ref, got.shape), rtol=1e-10, atol=1e-12)


def test_einsum_row_dots_of_older_numpy_agree(rng):
    """NumPy < 2 has no vecdot: einsum takes its place, also in the chunks of long rows."""
    x = rng.normal(2, 3, size=(5, 40))
    want, _ = nn_.layer_norm(x, (40,))
    with _core_settings(_dot=partial(np.einsum, "ij,ij->i"), DOT_MAX=16):
        got, cache = nn_.layer_norm(x, (40,))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.norm.mean[:, 0], x.mean(1), rtol=1e-12)


@pytest.mark.parametrize("rows, unit", [(1, 1), (7, 1), (12, 4), (13, 4), (64, 64), (100, 8)])
def test_run_parts_covers_every_row_once_and_uses_the_threads(rows, unit):
    seen, names = [], set()

    def record(r):
        seen.append(r)
        names.add(threading.current_thread().name)
    with _core_settings(PART_BYTES=10, THREADS=3):
        core._run_parts(record, rows, unit, nbytes=rows * 10)
    covered = sorted(i for r in seen for i in range(rows)[r])
    assert covered == list(range(rows))                    # every row once
    assert all(r.start % unit == 0 for r in seen)          # parts start on a whole tile
    if -(-rows // unit) > 1:                               # more than one part: other threads help
        assert any(name.startswith("normlib") for name in names)


def _layer_norm_on_threads(queue):
    with _core_settings(PART_BYTES=64, THREADS=2, TILE_VALUES=1):
        queue.put(float(nn_.layer_norm(np.arange(64.0).reshape(8, 8), (8,))[0].sum()))


def test_threaded_parts_work_in_a_forked_child():
    """The pool's threads do not survive a fork: the child must make its own, not wait forever."""
    import multiprocessing
    _layer_norm_on_threads(multiprocessing.Queue())         # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_layer_norm_on_threads, args=(queue,))
    child.start()
    child.join(timeout=20)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    assert abs(queue.get(timeout=5)) < 1e-9


def test_empty_batch_returns_empty_and_keeps_running_statistics():
    rm, rv = np.full(3, 0.5), np.ones(3)
    y, _ = nn_.batch_norm(np.zeros((0, 3)), running_mean=rm, running_var=rv)
    assert y.shape == (0, 3)
    np.testing.assert_array_equal(rm, 0.5)
    assert nn_.layer_norm(np.zeros((0, 4)), (4,))[0].shape == (0, 4)


def test_numpy_reference_imports_no_torch():
    import subprocess
    import sys
    code = "import sys, normlib.numpy; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
