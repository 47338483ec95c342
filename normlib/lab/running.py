"""Running statistics of BatchNorm: the two momentum conventions, precise (population) statistics,
Batch Renormalization, and a from-scratch BatchNorm that reads `running_var` the other way.

    from normlib.lab import running
    running.torch_to_keras_momentum(0.1)          # 0.9: the same EMA in Keras/Flax's convention
    running.precise_bn(model, data.x_train)       # Wu & Johnson 2021: recompute the statistics
    layer = running.BatchRenorm1d(64)             # Ioffe 2017, a drop-in for BatchNorm1d
"""
import copy

import torch
from torch import nn

from .. import torch as nt
from ..torch import functional as F

# --- the two conventions --------------------------------------------------------------------------


def torch_to_keras_momentum(momentum):
    """PyTorch's momentum (weight of the new batch) -> Keras/Flax's (weight of the history)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return 1.0 - momentum


def keras_to_torch_momentum(momentum):
    """Keras/Flax's momentum (weight of the history) -> PyTorch's (weight of the new batch)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return 1.0 - momentum


def ema_update(running, batch_stat, momentum, convention="torch"):
    """One EMA step, returned (not in place).

    convention="torch":  running <- (1 - momentum) * running + momentum * batch_stat
    convention="keras":  running <- momentum * running + (1 - momentum) * batch_stat  (Keras, Flax)
    """
    if convention == "torch":
        return (1.0 - momentum) * running + momentum * batch_stat
    if convention == "keras":
        return momentum * running + (1.0 - momentum) * batch_stat
    raise ValueError(f"convention must be 'torch' or 'keras', got {convention!r}")


# --- finding and measuring the BatchNorm layers of a model ----------------------------------------

def bn_layers(model):
    """The BatchNorm layers (torch.nn's or normlib's, which subclass them) of `model` that keep
    running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and getattr(m, "running_mean", None) is not None]


def _buffers(layers):
    return [{k: getattr(m, k).clone() for k in ("running_mean", "running_var",
                                                 "num_batches_tracked")} for m in layers]


def _restore(layers, saved):
    for m, s in zip(layers, saved):
        for k, v in s.items():
            getattr(m, k).copy_(v)


@torch.no_grad()
def layer_input_stats(model, x):
    """[(mean, biased var)] of the input of every BatchNorm layer, per channel, for one train-mode
    forward of all of `x` (the statistics the current weights give this data set). Leaves the
    running buffers and the train/eval mode as they were."""
    layers, stats = bn_layers(model), []
    saved, was_training = _buffers(layers), model.training

    def hook(module, inputs):
        z = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)   # C, N*spatial
        stats.append((z.mean(1), z.var(1, unbiased=False)))

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        model.train()
        model(x)
    finally:
        for h in handles:
            h.remove()
        _restore(layers, saved)
        model.train(was_training)
    return stats


@torch.no_grad()
def precise_bn(model, x, batch_size=64, num_batches=None, generator=None):
    """Recompute every BatchNorm's running statistics as the plain average, over `num_batches`
    batches of `x` (default: one pass), of the batch means and unbiased batch variances, with the
    weights frozen (Wu & Johnson 2021, "precise BN"). Momentum and mode are restored; returns model.
    """
    layers = bn_layers(model)
    momenta, was_training = [m.momentum for m in layers], model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None                       # cumulative average over num_batches_tracked
    order = torch.randperm(len(x), generator=generator).to(x.device)
    starts = list(range(0, len(x) - batch_size + 1, batch_size))
    if num_batches is not None:
        starts = starts[:num_batches]
    try:
        model.train()
        for s in starts:
            model(x[order[s:s + batch_size]])
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.train(was_training)
    return model


# --- Batch Renormalization (Ioffe 2017) -----------------------------------------------------------

class BatchRenorm1d(nt.BatchNorm1d):
    r"""Batch Renormalization for (N, C) input: in training

    .. math:: \hat x = \frac{x - \mu_B}{\sigma_B} r + d,\quad
              r = \mathrm{clip}_{[1/r_{max}, r_{max}]}\frac{\sigma_B}{\sigma},\quad
              d = \mathrm{clip}_{[-d_{max}, d_{max}]}\frac{\mu_B - \mu}{\sigma}

    with μ, σ² the running statistics and r, d treated as constants (no gradient). r = 1, d = 0 is
    BatchNorm. r_max and d_max grow linearly from 1 and 0 over `warmup` batches, as the paper
    relaxes them. Running statistics and eval are BatchNorm's (PyTorch's momentum convention,
    unbiased running_var); the normalization itself is normlib's batch_norm.
    """

    def __init__(self, num_features, r_max=3.0, d_max=5.0, warmup=0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.r_max, self.d_max, self.warmup = r_max, d_max, warmup

    def limits(self):
        """(r_max, d_max) at the current num_batches_tracked."""
        t = 1.0 if self.warmup == 0 else min(1.0, float(self.num_batches_tracked) / self.warmup)
        return 1.0 + (self.r_max - 1.0) * t, self.d_max * t

    def forward(self, input):
        if not self.training:
            return super().forward(input)
        if input.dim() != 2:
            raise ValueError(f"BatchRenorm1d takes (N, C), got shape {tuple(input.shape)}")
        self._check_input(input)
        xhat = F.batch_norm(input, None, None, None, None, True, 0.0, self.eps)  # (x-μ_B)/σ_B
        with torch.no_grad():
            mean = input.mean(0)
            var = input.var(0, unbiased=False)
            std_batch, std_run = (var + self.eps).sqrt(), (self.running_var + self.eps).sqrt()
            r_max, d_max = self.limits()
            r = (std_batch / std_run).clamp(1.0 / r_max, r_max)
            d = ((mean - self.running_mean) / std_run).clamp(-d_max, d_max)
            n = input.shape[0]
            self.num_batches_tracked.add_(1)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var * n / (n - 1), alpha=m)
        y = xhat * r + d
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self):
        return (super().extra_repr()
                + f", r_max={self.r_max}, d_max={self.d_max}, warmup={self.warmup}")


# --- a from-scratch BatchNorm that stores the *biased* variance (Ioffe & Szegedy's Algorithm 2) ---

class Algorithm2BatchNorm1d(nn.Module):
    """A from-scratch BatchNorm1d that follows the 2015 paper's Algorithm 2 literally: it stores the
    average of the *biased* batch variances in `running_var` and applies the m/(m-1) correction at
    inference, with m = `batch_size`. Same parameter and buffer names as torch.nn.BatchNorm1d, so
    a PyTorch state_dict loads without complaint, but PyTorch's running_var is already unbiased:
    loaded here it is corrected twice."""

    def __init__(self, num_features, batch_size, eps=1e-5, momentum=0.1):
        super().__init__()
        self.batch_size, self.eps, self.momentum = batch_size, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        if self.training:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)          # biased: the paper's E[σ_B²]
        else:
            m = self.batch_size
            mean, var = self.running_mean, self.running_var * m / (m - 1)   # Algorithm 2, step 10
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def swap_batchnorm(model, make):
    """A copy of `model` with each BatchNorm1d `bn` replaced by `make(bn)` (state_dict loaded),
    placed on bn's device and in its floating dtype, and in bn's mode (train or eval)."""
    model = copy.deepcopy(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm1d):                # normlib's too: a subclass
            state = child.state_dict()
            like = next((t for t in state.values() if t.is_floating_point()), None)
            new = make(child) if like is None else make(child).to(like.device, like.dtype)
            new.load_state_dict(state)
            setattr(model, name, new.train(child.training))
        else:
            setattr(model, name, swap_batchnorm(child, make))
    return model


# --- batches that are not i.i.d., and a plain loop over any batch stream ------------------------

def class_pair_batches(y, batch_size, generator=None):
    """Endless batches of indices in which every batch holds two classes only, half each."""
    y = y.cpu()
    classes = int(y.max()) + 1
    by_class = [torch.nonzero(y == c).flatten() for c in range(classes)]
    while True:
        pair = torch.randperm(classes, generator=generator)[:2]
        half = batch_size // 2
        idx = [by_class[c][torch.randint(len(by_class[c]), (k,), generator=generator)]
               for c, k in zip(pair.tolist(), (half, batch_size - half))]
        yield torch.cat(idx)


def fit(model, x, y, index_batches, steps, lr, momentum=0.0, weight_decay=0.0):
    """SGD on cross-entropy over `steps` batches drawn from the iterator `index_batches`;
    returns the list of batch losses."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    losses = []
    for _ in range(steps):
        idx = next(index_batches).to(x.device)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
