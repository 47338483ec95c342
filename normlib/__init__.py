"""normlib: one core (normalize over a set of axes), five norms, two backends.

`normlib.numpy` is the NumPy reference; `normlib.torch` the same math as torch autograd Functions
and drop-in `torch.nn` twins. Importing `normlib` itself imports neither array library's backend.
"""
__version__ = "0.1.0"
