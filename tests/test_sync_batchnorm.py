"""normlib.torch.SyncBatchNorm: torch's interface; in 2 and 3 gloo processes it equals BatchNorm on
the whole batch (outputs, input gradients, running statistics; parameter gradients summed over the
processes); uneven and empty shards; DDP training equals one-process training; no torch norm op.

Processes are slow to start, so each world size is launched once and runs every check; `launch`
has a timeout, so a hang fails the test instead of blocking the suite.
"""
import inspect
import time

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing import ProcessRaisedException

import normlib.torch as nt
from normlib.lab import MLP
from normlib.lab import distributed as D

from ops_recorder import RecordOps  # tests/ops_recorder.py

# normlib follows torch 2.13, whose BatchNorm takes `bias=` and prints it; older torch does neither
TORCH_NORMS_TAKE_BIAS = "bias" in inspect.signature(torch.nn.BatchNorm1d.__init__).parameters
TIMEOUT = 120   # seconds for one launch: generous for a loaded CI machine, finite for a hang


def _norm_ops_in_sync_step(rank, world_size):
    """Worker: the aten ops with 'norm' in their name that a synced forward + backward runs."""
    bn = nt.SyncBatchNorm(4)
    x = torch.randn(3, 4, 2, 2, requires_grad=True)
    with RecordOps() as rec:
        bn(x).square().sum().backward()
    return {op for op in rec.ops if "norm" in op} - {"linalg_vector_norm.default"}


def _too_few_values(rank, world_size):
    """Worker: rank 0 holds 1 sample, the others none: one value per channel in all. Every rank
    must raise (none may hang in a collective the others skipped)."""
    x = torch.randn(1 if rank == 0 else 0, 3)
    try:
        nt.SyncBatchNorm(3)(x)
    except ValueError as e:
        return str(e)
    return None


def _one_sample_each(rank, world_size):
    """Worker: one sample per process is a batch of world_size for SyncBatchNorm."""
    torch.manual_seed(rank)
    return nt.SyncBatchNorm(3)(torch.randn(1, 3)).detach()


def _sleep(rank, world_size, seconds):
    time.sleep(seconds)


def _full_batch_bn(x, dy, state=None, momentum=0.1):
    """torch.nn.BatchNorm on the whole batch: y, dx, dweight, dbias, state_dict."""
    bn = (torch.nn.BatchNorm1d if x.dim() <= 3 else torch.nn.BatchNorm2d)(
        x.shape[1], momentum=momentum, dtype=x.dtype)
    if state is not None:
        bn.load_state_dict(state)
    x = x.clone().requires_grad_()
    y = bn(x)
    y.backward(dy)
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.state_dict()


def _cases(world_size):
    """(x, dy, shard sizes, initial state) for one world size: even, uneven, empty shards."""
    g = torch.Generator().manual_seed(world_size)
    d = torch.float64
    state = {"weight": torch.rand(3, dtype=d, generator=g) + 0.5,
             "bias": torch.randn(3, dtype=d, generator=g),
             "running_mean": torch.randn(3, dtype=d, generator=g),
             "running_var": torch.rand(3, dtype=d, generator=g) + 0.5,
             "num_batches_tracked": torch.tensor(4)}
    shapes = {2: [((8, 3, 2, 2), [4, 4]), ((7, 3), [5, 2])],
              3: [((9, 3, 3), [3, 3, 3]), ((8, 3, 2, 2), [5, 0, 3]), ((6, 3), [1, 4, 1])]}
    cases = []
    for shape, sizes in shapes[world_size]:
        x = 3.0 + 2.0 * torch.randn(*shape, dtype=d, generator=g)
        cases.append((x, torch.randn(*shape, dtype=d, generator=g), sizes, state))
    return cases


def _ddp_data(world_size, steps=4, per_rank=6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps, world_size * per_rank, 64, generator=g)
    y = torch.randint(0, 10, (steps, world_size * per_rank), generator=g)
    torch.manual_seed(0)
    return x, y, MLP([64, 32, 10], norm="batch").state_dict()


@pytest.fixture(scope="module", params=[2, 3], ids=["2 processes", "3 processes"])
def world(request):
    """Launch `world_size` processes once; every check of this world size reads the results."""
    world_size = request.param
    cases = _cases(world_size)
    x, y, state = _ddp_data(world_size)
    sizes = D.shard_sizes(x.shape[1], world_size)
    calls = [(D.syncbn_step, case) for case in cases]
    calls += [(D.ddp_train, (sizes, x, y, 4, 0.1, state, True)),
              (D.ddp_train, (sizes, x, y, 4, 0.1, state, False)),
              (_norm_ops_in_sync_step, ()), (_too_few_values, ()), (_one_sample_each, ())]
    results = D.launch(D.several, world_size, calls, timeout=TIMEOUT)
    return world_size, cases, (x, y, state), results


def test_sync_equals_batchnorm_on_the_whole_batch(world):
    world_size, cases, _, results = world
    for i, (x, dy, sizes, state) in enumerate(cases):
        per_rank = [r[i] for r in results]
        y, dx, dweight, dbias, bn_state = _full_batch_bn(x, dy, state)
        torch.testing.assert_close(torch.cat([r["y"] for r in per_rank]), y)
        torch.testing.assert_close(torch.cat([r["dx"] for r in per_rank]), dx)
        # parameter gradients stay per process (DDP sums them): their sum is BatchNorm's
        torch.testing.assert_close(sum(r["dweight"] for r in per_rank), dweight)
        torch.testing.assert_close(sum(r["dbias"] for r in per_rank), dbias)
        for r in per_rank:   # every process holds the same running statistics as BatchNorm
            assert r["state"].keys() == bn_state.keys()
            for k in bn_state:
                torch.testing.assert_close(r["state"][k], bn_state[k])


def test_shared_table_holds_each_processs_count_mean_and_deviations(world):
    world_size, cases, _, results = world
    for i, (x, _, sizes, _) in enumerate(cases):
        c = x.shape[1]
        table = results[0][i]["table"]
        assert table.shape == (world_size, 1 + 2 * c)
        for r in range(world_size):   # every process received the same table
            torch.testing.assert_close(results[r][i]["table"], table)
        assert table[:, 0].tolist() == [s * (x[0, 0].numel()) for s in sizes]
        start = 0
        for r, s in enumerate(sizes):
            if s:
                shard = x[start:start + s].transpose(0, 1).reshape(c, -1)
                torch.testing.assert_close(table[r, 1:1 + c], shard.mean(1))
                torch.testing.assert_close(table[r, 1 + c:],
                                           ((shard - shard.mean(1, keepdim=True)) ** 2).sum(1))
            start += s
        whole = x.transpose(0, 1).reshape(c, -1)
        torch.testing.assert_close(results[0][i]["mean"], whole.mean(1))
        torch.testing.assert_close(results[0][i]["var"], whole.var(1, unbiased=False))


def test_ddp_with_sync_batchnorm_trains_exactly_like_one_process(world):
    world_size, _, (x, y, state), results = world
    model = MLP([64, 32, 10], norm="batch")
    model.load_state_dict(state)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(x.shape[0]):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[t]), y[t]).backward()
        opt.step()
    n = len(cases := _cases(world_size))
    synced, local = results[0][n], results[0][n + 1]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(synced[k], v, atol=1e-5, rtol=1e-4)
    # the oracle can fail: per-process BatchNorm sees other statistics and ends elsewhere
    assert (local["0.weight"] - model.state_dict()["0.weight"]).abs().max() > 1e-4
    assert cases   # (names the case count used above)


def test_torch_norm_ops_are_never_called_in_the_synced_path(world):
    _, cases, _, results = world
    assert all(r[len(cases) + 2] == set() for r in results)


def test_one_value_per_channel_in_all_raises_on_every_process(world):
    _, cases, _, results = world
    for r in results:
        assert "expected more than 1 value per channel" in r[len(cases) + 3]


def test_one_sample_per_process_is_a_batch(world):
    world_size, cases, _, results = world
    ys = torch.cat([r[len(cases) + 4] for r in results])      # (world_size, 3)
    torch.testing.assert_close(ys.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(ys.var(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_a_hanging_process_fails_instead_of_blocking():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within"):
        D.launch(_sleep, 1, 3600, timeout=5)
    assert time.monotonic() - start < 60


def test_a_failing_process_fails_the_launch():
    with pytest.raises(ProcessRaisedException, match="expected more than 1 value"):
        D.launch(D.syncbn_step, 1, torch.randn(1, 3), torch.randn(1, 3), [1], timeout=TIMEOUT)


# --- one process: torch's interface, and plain BatchNorm without a process group ---------------

def test_signature_is_torch_nn_sync_batchnorm_s():
    ours = inspect.signature(nt.SyncBatchNorm.__init__).parameters
    theirs = inspect.signature(torch.nn.SyncBatchNorm.__init__).parameters
    ours = [(p.name, p.default, p.kind) for p in ours.values()]
    theirs = [(p.name, p.default, p.kind) for p in theirs.values()]
    if not TORCH_NORMS_TAKE_BIAS:   # torch < 2.13: normlib's one extra keyword, `bias`
        ours = [p for p in ours if p[0] != "bias"]
    assert ours == theirs


@pytest.mark.parametrize("shape", [(6, 3), (6, 3, 5), (4, 3, 2, 2), (3, 3, 2, 2, 2)])
def test_without_a_process_group_it_is_batchnorm_in_train_and_eval(shape):
    assert not dist.is_initialized()
    torch.manual_seed(0)
    ours, theirs = nt.SyncBatchNorm(3), torch.nn.SyncBatchNorm(3)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    for training in (True, False):
        ours.train(training)
        theirs.train(training)
        x = (2 + torch.randn(*shape)).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        torch.testing.assert_close(ours(x), theirs(x2))
        ours(x).sum().backward()
        theirs(x2).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad)
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v)
    theirs.load_state_dict(ours.state_dict())   # and the reverse direction


def test_extra_options_match_torch():
    options = [{"affine": False}, {"track_running_stats": False}, {"momentum": None}]
    for kwargs in options + ([{"bias": False}] if TORCH_NORMS_TAKE_BIAS else []):
        ours, theirs = nt.SyncBatchNorm(3, **kwargs), torch.nn.SyncBatchNorm(3, **kwargs)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        assert repr(ours) == repr(theirs) or not TORCH_NORMS_TAKE_BIAS
        for _ in range(2):
            x = torch.randn(5, 3, 4)
            torch.testing.assert_close(ours(x), theirs(x))
        for k, v in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[k], v)


def test_convert_sync_batchnorm_replaces_torch_and_normlib_batchnorms():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(nt.BatchNorm2d(4, momentum=None)),
                                torch.nn.Flatten(), torch.nn.BatchNorm1d(16, affine=False))
    model.eval()
    weight, buffer = model[1].weight, model[1].running_mean
    out = nt.SyncBatchNorm.convert_sync_batchnorm(model, process_group="group")
    assert out is model
    assert isinstance(out[0], torch.nn.Conv2d)
    assert [type(m) for m in (out[1], out[2][0], out[4])] == [nt.SyncBatchNorm] * 3
    assert out[1].weight is weight and out[1].running_mean is buffer   # shared, not copied
    assert out[2][0].momentum is None and out[4].weight is None
    assert out[1].process_group == "group" and not out[1].training
    bare = nt.SyncBatchNorm.convert_sync_batchnorm(torch.nn.BatchNorm1d(5))
    assert isinstance(bare, nt.SyncBatchNorm) and bare.num_features == 5


def test_wrong_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="at least 2D"):
        nt.SyncBatchNorm(3)(torch.randn(3))
    with pytest.raises(ValueError, match="expected 3 channels"):
        nt.SyncBatchNorm(3)(torch.randn(4, 5))
