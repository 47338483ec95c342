"""Dropout, weight decay and gradient clipping next to normalization (chapter 11).

The few-line versions the chapter derives (inverted dropout, clipping by global norm and by value),
each checked against torch in tests/test_lab_stabilizers.py, and the experiment pieces: a
training set with few samples per class (so a network can overfit), an MLP with optional
BatchNorm and Dropout in either place, and a train loop that records the gradient norm before
clipping.

    from normlib.lab import stabilizers as st
    data = st.few_digits(per_class=10)                       # 100 training images, full test set
    model = st.mlp([64, 256, 256, 10], batch_norm=True, dropout=0.5)
    hist = st.train(model, data, steps=600, lr=0.1, clip="norm", max_norm=1.0)
"""
import math

import torch
from torch import nn

from .. import torch as nt
from .data import Data, batches, digits
from .setup import progress
from .train import evaluate


# ---------------------------------------------------------------- dropout
def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout: zero each element with probability p and scale the kept ones by 1/(1-p),
    so E[output] = x; the identity in eval. Same contract as torch.nn.functional.dropout."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p   # same shape as x
    return x * keep / (1.0 - p)          # gradient: 1/(1-p) where kept, 0 where dropped


class Dropout(nn.Module):
    """torch.nn.Dropout's twin built on `dropout` (reads self.training, like torch's)."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


# ---------------------------------------------------------------- gradient clipping
def _grads(parameters):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def grad_norm(parameters):
    """The global L2 norm of all gradients: sqrt(sum over tensors of ||g||^2)."""
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


@torch.no_grad()
def clip_grad_norm(parameters, max_norm, eps=1e-6):
    """Scale all gradients by min(1, max_norm / (norm + eps)) in place: the direction is kept.
    Returns the norm before clipping, like torch.nn.utils.clip_grad_norm_ (same eps)."""
    parameters = list(parameters) if not isinstance(parameters, torch.Tensor) else [parameters]
    total = grad_norm(parameters)
    scale = (max_norm / (total + eps)).clamp(max=1.0)
    for g in _grads(parameters):
        g.mul_(scale.to(g.device))
    return total


@torch.no_grad()
def clip_grad_value(parameters, clip_value):
    """Clamp every gradient element to [-clip_value, clip_value] in place: the direction changes."""
    for g in _grads(parameters):
        g.clamp_(-clip_value, clip_value)


# ---------------------------------------------------------------- the overfitting setup
def few_digits(per_class=10, seed=0, device=None):
    """The digits split of lab.digits(seed=0) with only `per_class` training images per class
    (chosen at random with `seed`) and the full test set (449 images): a net can overfit it."""
    data = digits(seed=0)
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(data.num_classes):
        idx = torch.nonzero(data.y_train == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    keep = torch.cat(keep)
    small = Data(data.x_train[keep], data.y_train[keep], data.x_test, data.y_test)
    return small.to(device) if device is not None else small


def mlp(sizes, batch_norm=False, dropout=0.0, dropout_where="hidden"):
    """Linear -> [BatchNorm] -> ReLU -> [Dropout] per hidden layer, then a Linear head.

    dropout_where: "hidden" puts Dropout after every hidden ReLU, so with batch_norm its output
    feeds the next layer's BatchNorm (the order Li et al. 2019 warn about); "head" puts a single
    Dropout before the head only, after every BatchNorm (their recommendation).
    With batch_norm the hidden Linear layers have no bias (β replaces it).
    """
    if dropout_where not in ("hidden", "head"):
        raise ValueError(f"dropout_where must be 'hidden' or 'head', got {dropout_where!r}")
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i == len(sizes) - 2:
            if dropout and dropout_where == "head":
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(a, b))
            break
        layers.append(nn.Linear(a, b, bias=not batch_norm))
        if batch_norm:
            layers.append(nt.BatchNorm1d(b))
        layers.append(nn.ReLU())
        if dropout and dropout_where == "hidden":
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- a train loop that sees gradients
def train(model, data, steps, lr, batch_size=32, weight_decay=0.0, clip=None, max_norm=1.0,
          clip_value=0.1, seed=0, eval_every=None, desc=None):
    """Plain SGD with cross-entropy, like lab.train, but recording the gradient norm before clipping.

    clip: None, "norm" (clip_grad_norm to max_norm) or "value" (clip_grad_value to clip_value).
    Returns a dict: step, loss, grad_norm (per step), eval_step, train_acc, test_acc, diverged.
    A non-finite loss or gradient stops training and sets diverged = True.
    """
    if clip not in (None, "norm", "value"):
        raise ValueError(f"clip must be None, 'norm' or 'value', got {clip!r}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    eval_every = eval_every or max(1, steps // 20)
    hist = {"step": [], "loss": [], "grad_norm": [], "eval_step": [], "train_acc": [],
            "test_acc": [], "diverged": False}
    stream = batches(len(data.x_train), min(batch_size, len(data.x_train)), gen)
    model.train()
    for step in progress(range(1, steps + 1), desc=desc, leave=False):
        idx = next(stream).to(data.x_train.device)
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = grad_norm(model.parameters()).item()
        hist["step"].append(step)
        hist["loss"].append(loss.item())
        hist["grad_norm"].append(norm)
        if not (math.isfinite(hist["loss"][-1]) and math.isfinite(norm)):
            hist["diverged"] = True
            break
        if clip == "norm":
            clip_grad_norm(model.parameters(), max_norm)
        elif clip == "value":
            clip_grad_value(model.parameters(), clip_value)
        opt.step()
        if step % eval_every == 0 or step == steps:
            hist["eval_step"].append(step)
            hist["train_acc"].append(evaluate(model, data.x_train, data.y_train)[1])
            hist["test_acc"].append(evaluate(model, data.x_test, data.y_test)[1])
    return hist



# ---------------------------------------------------------------- looking inside: variance shift
@torch.no_grad()
def module_input(model, module, x):
    """The tensor `module` receives when model(x) runs, in the modes the layers are in now.
    (In train mode this forward pass also updates BatchNorm's running statistics.)"""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


def set_modes(model, dropout, batch_norm):
    """Dropout layers in train mode iff `dropout`, BatchNorm layers iff `batch_norm`, the rest eval.
    (dropout=True, batch_norm=False) sees training-time noise without touching running stats."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train(dropout)
        elif isinstance(m, nn.BatchNorm1d):                  # normlib's too: a subclass
            m.train(batch_norm)
    return model


@torch.no_grad()
def recompute_batch_norm(model, x, batch_size=32):
    """Re-estimate every BatchNorm's running statistics from x with Dropout off: reset them, then
    average (momentum=None) over batches of x. The weights do not change. Returns the model,
    in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]   # normlib's too
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    set_modes(model, dropout=False, batch_norm=True)
    for i in range(0, len(x) - batch_size + 1, batch_size):
        model(x[i:i + batch_size])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()
