"""Invariances of normalized layers (Ba, Kiros & Hinton 2016, Table 1) and a masked BatchNorm.

A layer computes summed inputs a = x Wᵀ (x: (N, D_in) batch, W: (D_out, D_in), no bias) and then
normalizes them with gain 1 and bias 0. Table 1 of the LayerNorm paper asks which transformations of
W or of the data leave the normalized output unchanged. `invariance_table()` answers by applying each
transformation and measuring the change of the output; `PUBLISHED` holds the paper's answers.

    from normlib.lab import invariance
    changes = invariance.invariance_table()              # {method: {transform: relative change}}
    invariance.verdicts(changes) == invariance.PUBLISHED  # True for the paper's three rows

For padded sequences, `masked_batch_norm(x, mask)` takes BatchNorm statistics over the real tokens
only; `pad_sequences` builds the padded batch and its mask.
"""
import torch

from ..torch import functional as F

__all__ = ["METHODS", "TRANSFORMS", "PUBLISHED", "normalized_output", "transform",
           "relative_change", "invariance_table", "verdicts", "pad_sequences", "masked_batch_norm"]

METHODS = ("BatchNorm", "WeightNorm", "LayerNorm", "RMSNorm")

# Table 1's columns, in the paper's order.
TRANSFORMS = ("weight matrix re-scaling", "weight matrix re-centering", "weight vector re-scaling",
              "dataset re-scaling", "dataset re-centering", "single training case re-scaling")

# Ba et al. 2016, Table 1: True = invariant. RMSNorm is not in the paper (Zhang & Sennrich 2019).
PUBLISHED = {
    "BatchNorm": dict(zip(TRANSFORMS, (True, False, True, True, True, False))),
    "WeightNorm": dict(zip(TRANSFORMS, (True, False, True, False, False, False))),
    "LayerNorm": dict(zip(TRANSFORMS, (True, True, False, True, False, True))),
}


def normalized_output(method, weight, x, eps=1e-12):
    """The normalized summed inputs of one layer, gain 1 and bias 0: (N, D_out).

    BatchNorm: each unit over the batch (training mode). WeightNorm: a_i / ‖w_i‖ (each unit's weight
    vector normalized). LayerNorm / RMSNorm: each sample over the units.
    """
    a = x @ weight.T                                                   # N, D_out
    if method == "BatchNorm":
        return F.batch_norm(a, None, None, training=True, eps=eps)
    if method == "WeightNorm":
        return a / weight.norm(dim=1)                                  # ‖w_i‖ per unit: D_out
    if method == "LayerNorm":
        return F.layer_norm(a, (a.shape[1],), eps=eps)
    if method == "RMSNorm":
        return F.rms_norm(a, (a.shape[1],), eps=eps)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def transform(name, weight, x, generator=None):
    """(weight', x') after one of Table 1's transformations, with random factors from `generator`
    (a CPU one: the factors are drawn on the CPU, then moved to weight's device).

    weight matrix re-scaling    W' = δ W                 (one scalar δ > 0)
    weight matrix re-centering  W' = W + 1 γᵀ            (the same vector γ added to every unit's row)
    weight vector re-scaling    w_i' = δ_i w_i           (one δ_i > 0 per unit)
    dataset re-scaling          x_n' = δ x_n             (one scalar for the whole data set)
    dataset re-centering        x_n' = x_n + γ           (the same vector for every case)
    single training case re-s.  x_n' = δ_n x_n           (one δ_n > 0 per case)
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    opts = {"generator": g, "dtype": weight.dtype}

    def randn(*shape):
        return torch.randn(*shape, **opts).to(weight.device)

    def positive(*shape):                                              # factors in [0.25, 4]
        return (4.0 ** (2 * torch.rand(*shape, **opts) - 1)).to(weight.device)

    n, (d_out, d_in) = x.shape[0], weight.shape
    if name == "weight matrix re-scaling":
        return positive(()) * weight, x
    if name == "weight matrix re-centering":
        return weight + randn(1, d_in), x
    if name == "weight vector re-scaling":
        return positive(d_out, 1) * weight, x
    if name == "dataset re-scaling":
        return weight, positive(()) * x
    if name == "dataset re-centering":
        return weight, x + randn(1, d_in)
    if name == "single training case re-scaling":
        return weight, positive(n, 1) * x
    raise ValueError(f"transform must be one of {TRANSFORMS}, got {name!r}")


def relative_change(before, after):
    """max |after - before| / max |before|: 0 for an invariant output, O(1) otherwise."""
    return float((after - before).abs().max() / before.abs().max())


def invariance_table(methods=METHODS, transforms=TRANSFORMS, n=64, d_in=20, d_out=16, seed=0,
                     eps=1e-12):
    """{method: {transform: relative change of the normalized output}}, in float64.

    x is a random (n, d_in) batch with a nonzero mean (so that re-centering has something to move),
    W a random (d_out, d_in) matrix; each method sees the same x, W and transformed copies.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64) + 1.0
    weight = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) / d_in ** 0.5
    table = {}
    for method in methods:
        before = normalized_output(method, weight, x, eps)
        table[method] = {}
        for name in transforms:
            w2, x2 = transform(name, weight, x, torch.Generator().manual_seed(seed + 1))
            table[method][name] = relative_change(before, normalized_output(method, w2, x2, eps))
    return table


def verdicts(table, tol=1e-6):
    """{method: {transform: invariant?}}: a relative change below `tol` counts as invariant."""
    return {m: {t: change < tol for t, change in row.items()} for m, row in table.items()}


def pad_sequences(sequences, length=None, value=0.0):
    """Stack (T_i, C) tensors into an (N, T, C) batch padded with `value`, and an (N, T) bool mask
    that is True on real tokens, both on the sequences' device. `length` (default: the longest
    T_i) may add extra padding."""
    length = length or max(len(s) for s in sequences)
    c = sequences[0].shape[1]
    device = sequences[0].device
    x = torch.full((len(sequences), length, c), value, dtype=sequences[0].dtype, device=device)
    mask = torch.zeros(len(sequences), length, dtype=torch.bool, device=device)
    for i, s in enumerate(sequences):
        x[i, :len(s)] = s
        mask[i, :len(s)] = True
    return x, mask


def masked_batch_norm(x, mask, weight=None, bias=None, eps=1e-5):
    """BatchNorm of (N, T, C) token features with statistics over the real tokens only.

    mask (N, T) is True on real tokens. Per channel: mean and biased variance over the masked
    positions (two passes, never E[x²] - E[x]²); padded positions come out as 0. Differentiable
    through torch's autograd. Equals BatchNorm1d (training) on the real tokens concatenated.
    """
    m = mask.unsqueeze(-1).to(x.dtype)                                 # N, T, 1
    count = m.sum()                                                    # number of real tokens
    mean = (x * m).sum(dim=(0, 1)) / count                             # C
    var = (((x - mean) * m) ** 2).sum(dim=(0, 1)) / count              # C, biased
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * m
