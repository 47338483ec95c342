"""A dispatch mode that records which aten ops run: how the tests prove normlib never calls torch's
own normalization kernels (test_torch_functional.py, test_sync_batchnorm.py)."""
from torch.utils._python_dispatch import TorchDispatchMode


class RecordOps(TorchDispatchMode):
    """Records the name of every aten op that runs inside the `with` block in `self.ops`."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.__name__)
        return func(*args, **(kwargs or {}))
