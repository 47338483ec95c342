"""Experiments on internal covariate shift (ICS) and on why BatchNorm helps.

    from normlib.lab import ics
    run = ics.figure1_run(data, norm="batch", steps=1000)     # Ioffe & Szegedy 2015, Figure 1
    model = ics.add_noise(lab.MLP(sizes, norm="batch"))       # Santurkar et al. 2018, "noisy BN"
    dist, cos = ics.ics(loss_fn, ics.layer_groups(model), lr) # ICS as Santurkar et al. measure it
    losses, grad_change = ics.landscape(loss_fn, params, etas)

Every function measures a real model; nothing here simulates a result.
"""
import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .models import MLP
from .train import evaluate, train

PERCENTILES = (15, 50, 85)


@contextmanager
def restored(model):
    """Run a block, then put back every parameter and buffer (BN running statistics included)."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield model
    finally:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved[k])


# ---------------------------------------------------------------- Ioffe & Szegedy, Figure 1
@torch.no_grad()
def unit_percentiles(model, x, layer=-1, q=PERCENTILES):
    """Percentiles `q` of every unit's activation input at hidden layer `layer` over the samples
    of x, as the activation sees it in training: x goes through as one batch in train mode (BN
    normalizes with x's own statistics); running statistics are put back. Returns (len(q), units).
    """
    with restored(model):
        a = model.pre_activations(x)[layer]                                # N, units
    return np.percentile(a.cpu().double().numpy(), q, axis=0)


def figure1_run(data, norm=None, steps=1000, lr=0.5, batch_size=60, init_std=0.1, seed=0,
                track_every=20, sizes=(64, 100, 100, 100, 10), activation=nn.Sigmoid):
    """Ioffe & Szegedy's Figure 1 setup: sigmoid MLP with small Gaussian weights, SGD.

    Every `track_every` steps (and before training) records the test accuracy and the 15/50/85th
    percentiles of each last-hidden-layer unit's sigmoid input over the test set
    (`unit_percentiles`: the test set as one training-mode batch).
    Returns dict(step (T,), test_acc (T,), pct (T, 3, units), history, model).
    """
    torch.manual_seed(seed)
    model = MLP(list(sizes), norm=norm, activation=activation, init_std=init_std)
    model = model.to(data.x_train.device)
    steps_seen, acc, pct = [0], [evaluate(model, data.x_test, data.y_test)[1]], \
        [unit_percentiles(model, data.x_test)]

    def hook(step, model, xb, yb):
        if step % track_every == 0:
            steps_seen.append(step)
            acc.append(evaluate(model, data.x_test, data.y_test)[1])
            pct.append(unit_percentiles(model, data.x_test))

    hist = train(model, data, steps, lr, batch_size=batch_size, seed=seed, step_hook=hook,
                 eval_every=steps)
    return {"step": np.array(steps_seen), "test_acc": np.array(acc), "pct": np.stack(pct),
            "history": hist, "model": model}


def percentile_drift(pct, start=0):
    """How far the percentile curves move: for each unit and percentile, max - min over time
    (from index `start` on), averaged over units and percentiles. pct: (T, P, units)."""
    p = np.asarray(pct)[start:]
    return float((p.max(axis=0) - p.min(axis=0)).mean())


def steps_to_reach(steps, acc, target):
    """The first step at which acc >= target, or inf if it never does."""
    hit = np.nonzero(np.asarray(acc) >= target)[0]
    return float(steps[hit[0]]) if len(hit) else math.inf


# ---------------------------------------------------------------- Santurkar et al., noisy BN
class NoisyNorm(nn.Module):
    """`inner` (a norm layer, or nn.Identity), then deliberate covariate shift in training:

        a <- s * a + m,  m ~ U(mu - spread, mu + spread),  s ~ N(sigma, scale_std²) per element,

    with mu ~ U(-mean_range, mean_range) and sigma ~ U(1, 1 + std_range) drawn per layer and per
    forward pass (every step), as in Santurkar et al. 2018. Eval mode adds no noise."""

    def __init__(self, inner, mean_range=0.5, std_range=0.25, spread=0.1, scale_std=0.1):
        super().__init__()
        self.inner = inner
        self.mean_range, self.std_range = mean_range, std_range
        self.spread, self.scale_std = spread, scale_std

    def forward(self, x):
        a = self.inner(x)
        if not self.training:
            return a
        mu = (torch.rand(()) * 2 - 1) * self.mean_range
        sigma = 1 + torch.rand(()) * self.std_range
        m = mu + (torch.rand(a.shape) * 2 - 1) * self.spread
        s = sigma + torch.randn(a.shape) * self.scale_std
        return s.to(a) * a + m.to(a)

    def extra_repr(self):
        return f"mean_range={self.mean_range}, std_range={self.std_range}"


def add_noise(mlp, **kwargs):
    """Wrap the norm slot (norm layer or identity) of every hidden layer of a lab.MLP in a
    NoisyNorm, in place; returns the model."""
    for i in mlp.activation_index:
        mlp[i - 1] = NoisyNorm(mlp[i - 1], **kwargs)
    return mlp


# ---------------------------------------------------------------- ICS and the loss landscape
def layer_groups(model):
    """Parameters grouped by layer, input side first: each Linear (its weight first, then its bias)
    plus the parameters of the norm layer that follows it. Works for lab.MLP and DeepLinear."""
    groups, mods = [], list(model.modules())
    for m in mods:
        if isinstance(m, nn.Linear):
            groups.append([p for p in m.parameters()])
        elif groups and len(list(m.children())) == 0 and not isinstance(m, nn.Linear):
            groups[-1] += [p for p in m.parameters(recurse=False)]
    return groups


def _cos(a, b):
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-30))


def ics(loss_fn, groups, lr):
    """Internal covariate shift as Santurkar et al. 2018 define it, for layers 2..L.

    For layer i: G = dL/dW_i now; G' = dL/dW_i after every earlier layer (groups[:i]) has taken
    its SGD step -lr·grad (layers i..L unchanged), on the same loss_fn (same batch). The caller
    restores the model (use `restored`). Returns (‖G - G'‖, cos(G, G')) as arrays over i = 1..L-1.
    """
    params = [p for g in groups for p in g]
    grads = torch.autograd.grad(loss_fn(), params)
    grad_of = {id(p): g for p, g in zip(params, grads)}
    start = [p.detach().clone() for p in params]
    dist, cos = [], []
    for i in range(1, len(groups)):
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
            for g in groups[:i]:
                for p in g:
                    p.sub_(lr * grad_of[id(p)])
        w = groups[i][0]
        g_new = torch.autograd.grad(loss_fn(), [w])[0]
        g_old = grad_of[id(w)]
        dist.append(float((g_old - g_new).norm()))
        cos.append(_cos(g_old, g_new))
    with torch.no_grad():
        for p, p0 in zip(params, start):
            p.copy_(p0)
    return np.array(dist), np.array(cos)


def landscape(loss_fn, params, etas):
    """Step along the gradient g with each step size eta: returns (loss(w - eta·g) for each eta,
    ‖∇L(w - eta·g) - g‖ for each eta, ‖g‖). Santurkar et al.'s "loss landscape" and "gradient
    predictiveness". Parameters are put back; buffers are the caller's (use `restored`)."""
    params = list(params)
    g = torch.autograd.grad(loss_fn(), params)
    start = [p.detach().clone() for p in params]
    losses, changes = [], []
    for eta in etas:
        with torch.no_grad():
            for p, p0, gp in zip(params, start, g):
                p.copy_(p0 - eta * gp)
        loss = loss_fn()
        g2 = torch.autograd.grad(loss, params)
        losses.append(loss.item())
        changes.append(float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(g2, g)))))
    with torch.no_grad():
        for p, p0 in zip(params, start):
            p.copy_(p0)
    gnorm = float(torch.sqrt(sum((a ** 2).sum() for a in g)))
    return np.array(losses), np.array(changes), gnorm


# ---------------------------------------------------------------- the deep linear network
class DeepLinear(nn.Sequential):
    """x -> W_1 x -> [BN] -> W_2 ... -> W_depth x: a deep linear network (no activations), each
    hidden Linear optionally followed by BatchNorm1d. Weights ~ N(0, 1/width) (variance-keeping)."""

    def __init__(self, depth=25, width=10, norm=None):
        from .. import torch as nt
        layers = []
        for i in range(depth):
            layers.append(nn.Linear(width, width, bias=False))
            if norm == "batch" and i < depth - 1:
                layers.append(nt.BatchNorm1d(width))
            elif norm is not None and norm != "batch":
                raise ValueError(f"DeepLinear: norm must be None or 'batch', got {norm!r}")
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, width ** -0.5)


def linear_task(n=1000, dim=10, seed=0):
    """Santurkar et al.'s deep linear network task: x ~ N(0, I), target A x with A Gaussian,
    scaled by 1/sqrt(dim) so that the target has about unit variance per coordinate."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    a = torch.randn(dim, dim, generator=gen)
    return x, x @ a.T / dim ** 0.5


def train_dln(model, x, y, steps, lr, measure_every=None):
    """Full-batch gradient descent on the mean squared error ‖f(x) - y‖² / n. Every
    `measure_every` steps, measure ICS (per layer, at the current weights, with step size lr).
    Returns dict(loss (steps,), ics_step, ics_dist (M, L-1), ics_cos (M, L-1))."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = lambda: ((model(x) - y) ** 2).sum(dim=1).mean()
    out = {"loss": [], "ics_step": [], "ics_dist": [], "ics_cos": []}
    model.train()
    groups = layer_groups(model)
    for step in range(steps):
        if measure_every and step % measure_every == 0:
            with restored(model):
                d, c = ics(loss_fn, groups, lr)
            out["ics_step"].append(step)
            out["ics_dist"].append(d)
            out["ics_cos"].append(c)
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out["loss"].append(loss.item())
        if not math.isfinite(out["loss"][-1]):
            break
    return {k: np.array(v) for k, v in out.items()}


# ---------------------------------------------------------------- initialization scale
@torch.no_grad()
def he_init_(model, gain=1.0):
    """Every Linear/Conv weight ~ N(0, gain² · 2 / fan_in) (He init times `gain`), biases 0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, gain * math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                m.bias.zero_()
    return model
