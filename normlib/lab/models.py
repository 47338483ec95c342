"""Tiny models that take a `norm=` argument, built from normlib.torch's layers."""
import torch
from torch import nn

from .. import torch as nt

NORMS = (None, "batch", "layer", "group", "instance", "rms")


def norm_layer(norm, num_features, spatial=False, groups=8, **kwargs):
    """The normlib.torch layer for `norm` over `num_features` channels or features.

    norm: None (identity), "batch", "layer", "group", "instance" or "rms".
    spatial: the input is (N, C, H, W) (else (N, C)). LayerNorm/RMSNorm on images normalize over
    (C, H, W) per sample, done here as GroupNorm(1, C) (LayerNorm) since H, W are not known yet.
    """
    if norm is None:
        return nn.Identity()
    if norm == "batch":
        return (nt.BatchNorm2d if spatial else nt.BatchNorm1d)(num_features, **kwargs)
    if norm == "group":
        return nt.GroupNorm(min(groups, num_features), num_features, **kwargs)
    if norm == "instance":
        if not spatial:
            raise ValueError("norm='instance' needs spatial input: (N, C) has no axes to "
                             "normalize per channel; use norm='layer' for vectors")
        return nt.InstanceNorm2d(num_features, affine=True, **kwargs)
    if norm == "layer":
        return nt.GroupNorm(1, num_features, **kwargs) if spatial else \
            nt.LayerNorm(num_features, **kwargs)
    if norm == "rms":
        if spatial:
            raise ValueError("norm='rms' is defined here for (N, D) features only")
        return nt.RMSNorm(num_features, **kwargs)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class MLP(nn.Sequential):
    """Linear -> norm -> activation for each hidden layer, then a Linear head.

    sizes: [inputs, hidden..., outputs]. With a norm the hidden Linear layers drop their bias
    (the norm's β replaces it). init_std: if given, weights ~ N(0, init_std²) instead of torch's
    default (Ioffe & Szegedy's Figure 1 uses small Gaussian weights).
    """

    def __init__(self, sizes, norm=None, activation=nn.ReLU, init_std=None, **norm_kwargs):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            layers.append(nn.Linear(a, b, bias=last or norm is None))
            if not last:
                layers += [norm_layer(norm, b, **norm_kwargs), activation()]
        super().__init__(*layers)
        self.activation_index = [i for i in range(2, len(layers), 3)]   # Linear, norm, act
        if init_std is not None:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, init_std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def pre_activations(self, x):
        """Forward x and return the input of every activation, first hidden layer first."""
        out = []
        for i, m in enumerate(self):
            if i in self.activation_index:
                out.append(x)
            x = m(x)
        return out


class SmallCNN(nn.Module):
    """conv3x3 -> norm -> ReLU blocks for (N, C, 8, 8) images, global average pool, Linear head."""

    def __init__(self, in_channels=1, channels=(16, 32), num_classes=10, norm=None, **norm_kwargs):
        super().__init__()
        blocks, c = [], in_channels
        for width in channels:
            blocks += [nn.Conv2d(c, width, 3, padding=1, bias=norm is None),
                       norm_layer(norm, width, spatial=True, **norm_kwargs), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))
