"""A small Transformer encoder whose norm sits after the residual sum (Post-Norm), before the
sublayer (Pre-Norm) or after an up-weighted residual sum (DeepNorm), plus a sequence task made in
code and the measurements the Pre-Norm/Post-Norm chapter makes on it.

    post:      x <- Norm(x + F(x))           (Vaswani et al. 2017)
    pre:       x <- x + F(Norm(x))           (final Norm before the head)
    deepnorm:  x <- Norm(alpha * x + F(x))   (Wang et al. 2022; alpha = (2N)^(1/4), N blocks)

    from normlib.lab import transformer as tf
    data = tf.cyclic_shift(4096, length=16, vocab=16, shift=3)
    model = tf.Encoder(vocab=16, d_model=64, n_heads=4, depth=8, placement="pre")
    history = tf.train(model, data, steps=500, lr=1e-3, warmup=100)
"""
import copy

import torch
from torch import nn
from torch.nn import functional as F

from .. import torch as nt
from .data import Data
from .setup import progress
from .train import log_step

PLACEMENTS = ("post", "pre", "deepnorm")


def cyclic_shift(n, length=16, vocab=16, shift=3, test_fraction=0.25, seed=0, device=None):
    """Random token sequences x (n, length) and targets y[:, i] = x[:, (i + shift) % length].

    Every position needs attention to another position, found through the position embedding:
    a small task no single layer solves by copying its input. Chance accuracy is 1 / vocab.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(vocab, (n, length), generator=gen)
    y = torch.roll(x, -shift, dims=1)
    n_test = int(round(test_fraction * n))
    data = Data(x[n_test:], y[n_test:], x[:n_test], y[:n_test])
    return data.to(device) if device is not None else data


def make_norm(norm, d_model):
    """normlib.torch's LayerNorm ("layer") or RMSNorm ("rms") over the last axis."""
    if norm == "layer":
        return nt.LayerNorm(d_model)
    if norm == "rms":
        return nt.RMSNorm(d_model)
    raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v, out projections (no bias)."""

    def __init__(self, d_model, n_heads, causal=False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"SelfAttention: d_model ({d_model}) must be divisible by "
                             f"n_heads ({n_heads})")
        self.n_heads, self.causal = n_heads, causal
        self.q, self.k, self.v, self.out = (nn.Linear(d_model, d_model, bias=False)
                                            for _ in range(4))

    def forward(self, x):                                          # B,T,D
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for p in (self.q, self.k, self.v))              # B,H,T,D/H
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Two residual sublayers, attention then a ReLU feed-forward net, with the norm placed by
    `placement` ("post", "pre" or "deepnorm"); `alpha` scales the residual in DeepNorm."""

    def __init__(self, d_model, n_heads, d_ff, placement="pre", norm="layer", alpha=1.0,
                 causal=False):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.placement, self.alpha = placement, alpha
        self.attn = SelfAttention(d_model, n_heads, causal)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))
        self.norm1, self.norm2 = make_norm(norm, d_model), make_norm(norm, d_model)

    def sublayer(self, x, f, norm):
        if self.placement == "pre":
            return x + f(norm(x))
        return norm(self.alpha * x + f(x))                          # post: alpha = 1

    def forward(self, x):
        x = self.sublayer(x, self.attn, self.norm1)
        return self.sublayer(x, self.ffn, self.norm2)


class Encoder(nn.Module):
    """Token + position embeddings, `depth` blocks, (Pre-Norm: a final norm), a linear head.

    Init: Xavier-uniform weights, zero biases (as Xiong et al. 2020); embeddings N(0, 1/2) each so
    that their sum has variance 1. DeepNorm: alpha = (2 depth)^(1/4), and the ffn, value and output
    projections Xavier-normal with gain beta = (8 depth)^(-1/4) (Wang et al. 2022, encoder-only).
    forward(tokens (B, T)) -> logits (B, T, vocab).
    """

    def __init__(self, vocab, d_model=64, n_heads=4, depth=6, d_ff=None, placement="pre",
                 norm="layer", max_len=64, causal=False):
        super().__init__()
        self.placement, self.depth = placement, depth
        deep = placement == "deepnorm"
        alpha = (2 * depth) ** 0.25 if deep else 1.0
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff or 4 * d_model, placement, norm,
                                          alpha, causal) for _ in range(depth))
        self.final_norm = make_norm(norm, d_model) if placement == "pre" else nn.Identity()
        self.head = nn.Linear(d_model, vocab)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for emb in (self.tok, self.pos):
            nn.init.normal_(emb.weight, 0.0, 0.5 ** 0.5)
        if deep:
            beta = (8 * depth) ** -0.25
            for blk in self.blocks:
                for lin in (blk.ffn[0], blk.ffn[2], blk.attn.v, blk.attn.out):
                    nn.init.xavier_normal_(lin.weight, gain=beta)

    def embed(self, tokens):
        return self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))

    def features(self, tokens):
        """The last hidden state (after the final norm for Pre-Norm), (B, T, d_model)."""
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.final_norm(x)

    def forward(self, tokens):
        return self.head(self.features(tokens))


def sequence_loss(model, x, y):
    """Mean cross-entropy over all positions."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model, x, y, batch_size=1024):
    """(mean cross-entropy, per-token accuracy) in eval mode; restores the mode."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        loss += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1),
                                reduction="sum").item()
        correct += (logits.argmax(-1) == yb).sum().item()
    model.train(was_training)
    return loss / y.numel(), correct / y.numel()


def warmup_schedule(warmup):
    """Learning-rate multiplier: linear from 1/warmup to 1 over `warmup` steps, then 1."""
    return lambda step: min(1.0, step / warmup) if warmup else 1.0


def train(model, data, steps, lr, batch_size=32, warmup=0, betas=(0.9, 0.98), seed=0,
          eval_every=None, desc=None):
    """Adam (Xiong et al.'s betas) with an optional linear warm-up on the sequence task.

    Returns a dict of lists: step, loss (training batch), eval_step, test_loss, test_acc; and
    diverged (a non-finite loss stopped training; the remaining evaluations are missing).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_schedule(warmup))
    eval_every = eval_every or max(1, steps // 20)
    hist = {"step": [], "loss": [], "eval_step": [], "test_loss": [], "test_acc": [],
            "diverged": False}
    n = len(data.x_train)
    model.train()
    for step in progress(range(1, steps + 1), desc=desc, leave=False):
        idx = torch.randint(n, (batch_size,), generator=gen).to(data.x_train.device)
        loss = sequence_loss(model, data.x_train[idx], data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not log_step(hist, step, loss.item(), step % eval_every == 0 or step == steps,
                        lambda: _test_metrics(model, data)):
            break
    return hist


def _test_metrics(model, data):
    """What `train` records at an evaluation step."""
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
    return {"test_loss": test_loss, "test_acc": test_acc}


def ffn_grad_norms(model, x, y):
    """Frobenius norm of dLoss/dW for the second FFN weight of every block, first block first."""
    model.zero_grad(set_to_none=True)
    sequence_loss(model, x, y).backward()
    return [blk.ffn[2].weight.grad.norm().item() for blk in model.blocks]


def _inv_scale(norm, s):
    """1 / what `norm` divides each token by: its standard deviation (LayerNorm) or RMS."""
    eps = norm.eps if norm.eps is not None else torch.finfo(s.dtype).eps
    second = s.pow(2).mean(-1) if isinstance(norm, nt.RMSNorm) else s.var(-1, unbiased=False)
    return 1 / torch.sqrt(second + eps)


@torch.no_grad()
def identity_path_weights(model, tokens):
    """How strongly each sublayer's input x_k reaches the last residual state x_L by the identity
    path alone, and what each sublayer adds, at the model's current weights.

    Post-Norm/DeepNorm: x_{k+1} = Norm(alpha x_k + F(x_k)) passes x_k on as alpha x_k / s_k, with
    s_k the per-token standard deviation (RMSNorm: root mean square) of the norm's input (gamma = 1,
    beta = 0 at init, and x_k has mean 0 for k >= 1 under LayerNorm). So weight(k) = prod_{j >= k} alpha / s_j, averaged over tokens.
    Pre-Norm: x_{k+1} = x_k + F(Norm(x_k)) passes x_k on unscaled: weight 1.
    Returns (weights, f_var, x_var) over the 2*depth sublayers: weights[k] for the input of
    sublayer k, f_var[k] = Var F_k (per token, averaged), x_var[k] = Var x_k.
    """
    x = model.embed(tokens)
    scales, f_var, x_var = [], [], []
    for blk in model.blocks:
        for f, norm in ((blk.attn, blk.norm1), (blk.ffn, blk.norm2)):
            fx = f(norm(x)) if blk.placement == "pre" else f(x)
            f_var.append(fx.var(-1, unbiased=False).mean().item())
            x_var.append(x.var(-1, unbiased=False).mean().item())
            if blk.placement == "pre":
                scales.append(torch.ones_like(x[..., 0]))
                x = x + fx
            else:
                s = blk.alpha * x + fx
                scales.append(blk.alpha * _inv_scale(norm, s))
                x = norm(s)
    weights, running = [], torch.ones_like(scales[0])
    for s in reversed(scales):
        running = running * s
        weights.append(running.mean().item())
    return weights[::-1], f_var, x_var


@torch.no_grad()
def output_change(model, tokens, eps=1e-3, seed=0):
    """Liu et al. 2020's sensitivity: mean over tokens of |f(x; W) - f(x; W + delta)|^2 / eps^2,
    with delta ~ N(0, eps^2) added to every 2-D weight inside the blocks; f = model.features."""
    gen = torch.Generator().manual_seed(seed)
    perturbed = copy.deepcopy(model)
    for p in perturbed.blocks.parameters():
        if p.dim() == 2:
            p.add_(eps * torch.randn(p.shape, generator=gen).to(p.device))
    diff = model.features(tokens) - perturbed.features(tokens)
    return (diff.pow(2).sum(-1).mean() / eps ** 2).item()
