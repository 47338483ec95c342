"""What the chapters share that is not a norm: data made in code or shipped in packages, tiny models
with a `norm=` argument, a train loop that returns a history, plotting style. Small and explicit.

    from normlib import lab
    device = lab.setup(seed=0)                 # seeds, threads, plot style; CUDA when present
    data = lab.digits(device=device)           # scikit-learn's bundled 8x8 digits, no download
    model = lab.MLP([64, 100, 100, 10], norm="batch").to(device)
    history = lab.train(model, data, steps=500, lr=0.1, batch_size=32)
"""
from .data import Data, batches, digits, recorded
from .models import MLP, SmallCNN, norm_layer
from .plot import style
from .setup import device, is_quiet, progress, seed, setup
from .train import accuracy, evaluate, train

__all__ = ["Data", "batches", "digits", "recorded", "MLP", "SmallCNN", "norm_layer", "style",
           "device", "is_quiet", "progress", "seed", "setup", "accuracy", "evaluate", "train"]
