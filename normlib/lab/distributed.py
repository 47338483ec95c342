"""Several CPU processes from a notebook or a test: a launcher with a timeout, and the workers the
SyncBatchNorm chapter runs (they live here because `torch.multiprocessing.spawn` must import them).

    from normlib.lab import distributed
    results = distributed.launch(distributed.syncbn_step, 2, x, dy, [5, 3], state)

`launch` starts `world_size` processes joined in a gloo process group on a free local port, calls
`worker(rank, world_size, *args)` in each, and returns the list of their return values (rank order).
A process that raises makes `launch` raise; one that hangs makes it raise TimeoutError.
"""
import os
import socket
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .. import torch as nt
from ..torch.sync_batchnorm import SyncBatchNorm, sync_batch_stats
from .models import MLP

__all__ = ["free_port", "launch", "several", "shard_sizes", "syncbn_step", "ddp_train",
           "time_syncbn"]


def free_port():
    """A TCP port that is free right now (the OS picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, worker, world_size, port, out_dir, timeout, args):
    """What each spawned process runs: join the group, run the worker, save its result."""
    torch.set_num_threads(1)   # one core each: processes, not threads, share the machine here
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout))
    try:
        result = worker(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def launch(worker, world_size, *args, timeout=60.0):
    """Run worker(rank, world_size, *args) in `world_size` gloo processes; their results in a list.

    worker must be importable (defined in a module, not in a notebook cell). Raises TimeoutError
    (after ending the processes) if they have not all finished within `timeout` seconds.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.spawn(_entry, args=(worker, world_size, free_port(), out_dir, timeout, args),
                       nprocs=world_size, join=False)
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.terminate()
                for p in ctx.processes:
                    p.join(5)
                raise TimeoutError(f"launch: {world_size} processes running {worker.__name__} did "
                                   f"not finish within {timeout} s")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
                for r in range(world_size)]


def shard_sizes(n, world_size):
    """Split n samples into world_size consecutive shards, as evenly as possible."""
    return [n // world_size + (r < n % world_size) for r in range(world_size)]


def _shard(t, sizes, rank, dim=0):
    """This rank's consecutive slice of t along `dim`, shards of the given sizes."""
    start = sum(sizes[:rank])
    return t.narrow(dim, start, sizes[rank])


def syncbn_step(rank, world_size, x, dy, sizes, state=None, momentum=0.1):
    """One training step of SyncBatchNorm on this rank's shard of x (sizes[rank] samples).

    Returns this rank's output, input gradient, parameter gradients, buffers after the step, and
    the table of per-process (count, means, sums of squared deviations) the processes shared.
    """
    bn = SyncBatchNorm(x.shape[1], momentum=momentum, dtype=x.dtype)
    if state is not None:
        bn.load_state_dict(state)
    xs = _shard(x, sizes, rank).clone().requires_grad_()
    y = bn(xs)
    y.backward(_shard(dy, sizes, rank))
    count, mean, var, table = sync_batch_stats(xs.detach())
    return {"y": y.detach(), "dx": xs.grad, "dweight": bn.weight.grad, "dbias": bn.bias.grad,
            "state": {k: v.clone() for k, v in bn.state_dict().items()}, "table": table,
            "count": count, "mean": mean, "var": var}


def ddp_train(rank, world_size, sizes, x, y, steps, lr, state, sync=True):
    """Train lab.MLP([64, 32, 10], norm="batch") with DistributedDataParallel on this rank's shard
    of each batch x[t] (steps, N, 64), with SyncBatchNorm (`sync`) or per-process BatchNorm.
    Returns the final state_dict (parameters and running statistics)."""
    model = MLP([x.shape[-1], 32, 10], norm="batch")
    model.load_state_dict(state)
    if sync:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    for t in range(steps):
        loss = torch.nn.functional.cross_entropy(ddp(_shard(x[t], sizes, rank)),
                                                 _shard(y[t], sizes, rank))
        opt.zero_grad()
        loss.backward()   # DDP averages the parameter gradients over the processes
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _median_time(fn, repeats):
    """Median wall time of fn() in seconds, after one warm-up call; processes start together."""
    fn()
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def time_syncbn(rank, world_size, shapes, repeats=20):
    """Per input shape (this rank's shard, N, C, H, W): median seconds of one forward + backward of
    BatchNorm2d on the shard alone, of SyncBatchNorm, and of its two collectives alone."""
    rows = []
    for shape in shapes:
        c = shape[1]
        x = torch.randn(*shape).requires_grad_()
        dy = torch.randn(*shape)
        bn, sync_bn = nt.BatchNorm2d(c), SyncBatchNorm(c)
        gather_buf = torch.zeros(1 + 2 * c)
        reduce_buf = torch.zeros(2 * c)

        def step(layer):
            layer(x).backward(dy)

        def collectives():
            dist.all_gather([torch.empty_like(gather_buf) for _ in range(world_size)], gather_buf)
            dist.all_reduce(reduce_buf)

        rows.append({"shape": tuple(shape),
                     "local_bn": _median_time(lambda: step(bn), repeats),
                     "sync_bn": _median_time(lambda: step(sync_bn), repeats),
                     "collectives": _median_time(collectives, repeats)})
    return rows


def several(rank, world_size, calls):
    """Run several workers in one launch (processes are slow to start): calls = [(worker, args)]."""
    return [worker(rank, world_size, *args) for worker, args in calls]
