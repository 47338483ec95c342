"""normlib.lab.distributed helpers that need no processes (the launches are tested, with
SyncBatchNorm, in test_sync_batchnorm.py)."""
import pickle
import socket

import pytest
import torch
from hypothesis import given, strategies as st

from normlib.lab import distributed as D


@given(st.integers(0, 200), st.integers(1, 9))
def test_shard_sizes_cover_the_batch_evenly(n, world_size):
    sizes = D.shard_sizes(n, world_size)
    assert len(sizes) == world_size and sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shards_are_consecutive_slices():
    x = torch.arange(10)
    sizes = [5, 0, 3, 2]
    parts = [D._shard(x, sizes, r) for r in range(4)]
    assert torch.equal(torch.cat(parts), x) and [len(p) for p in parts] == sizes


def test_free_port_can_be_bound():
    port = D.free_port()
    assert 1024 <= port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_a_worker_that_cannot_be_imported_is_refused_at_once():
    """spawn pickles the worker by name: a lambda (or a notebook function) cannot be sent."""
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        D.launch(lambda rank, world_size: None, 1, timeout=30)
