"""normlib.lab.invariance: Ba et al.'s Table 1 reproduced, layers against torch.nn, masked BatchNorm."""
import pytest
import torch

from normlib.lab import invariance as inv


@pytest.fixture
def layer():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 12, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(10, 12, generator=g, dtype=torch.float64)
    return w, x


def test_table_1_of_the_layernorm_paper_reproduces():
    got = inv.verdicts(inv.invariance_table(methods=tuple(inv.PUBLISHED)))
    assert got == inv.PUBLISHED


def test_rmsnorm_row_is_layernorm_row_except_weight_recentering():
    got = inv.verdicts(inv.invariance_table(methods=("LayerNorm", "RMSNorm"), seed=3))
    differ = [t for t in inv.TRANSFORMS if got["LayerNorm"][t] != got["RMSNorm"][t]]
    assert differ == ["weight matrix re-centering"]


def test_verdicts_are_clear_cut():
    """Invariant cells change by ~machine precision, the others by O(1): no borderline cells."""
    for row in inv.invariance_table(seed=7).values():
        for change in row.values():
            assert change < 1e-9 or change > 1e-2


def test_normalized_outputs_match_torch_nn(layer):
    w, x = layer
    a = x @ w.T
    eps = 1e-12
    bn = torch.nn.functional.batch_norm(a, None, None, training=True, eps=eps)
    ln = torch.nn.functional.layer_norm(a, (10,), eps=eps)
    rms = torch.nn.functional.rms_norm(a, (10,), eps=eps)
    lin = torch.nn.Linear(12, 10, bias=False).double()
    lin.weight.data.copy_(w)
    wn = torch.nn.utils.parametrizations.weight_norm(lin)
    wn.parametrizations.weight.original0.data.fill_(1.0)               # gain g = 1
    for method, want in [("BatchNorm", bn), ("LayerNorm", ln), ("RMSNorm", rms),
                         ("WeightNorm", wn(x))]:
        torch.testing.assert_close(inv.normalized_output(method, w, x, eps), want)


def test_transforms_do_what_their_names_say(layer):
    w, x = layer
    g = lambda: torch.Generator().manual_seed(1)                      # noqa: E731
    w2, x2 = inv.transform("weight matrix re-centering", w, x, g())
    shift = w2 - w
    assert torch.equal(x2, x) and torch.allclose(shift, shift[:1].expand_as(shift))
    w2, _ = inv.transform("weight vector re-scaling", w, x, g())
    ratio = w2 / w
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio)) and ratio.min() > 0
    assert ratio[:, 0].std() > 0                                        # not one common scalar
    _, x2 = inv.transform("single training case re-scaling", w, x, g())
    ratio = x2 / x
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio)) and ratio[:, 0].std() > 0
    _, x2 = inv.transform("dataset re-centering", w, x, g())
    shift = x2 - x
    assert torch.allclose(shift, shift[:1].expand_as(shift)) and shift.abs().max() > 0
    with pytest.raises(ValueError, match="transform must be one of"):
        inv.transform("flip", w, x)
    with pytest.raises(ValueError, match="method must be one of"):
        inv.normalized_output("GroupNorm", w, x)


def _sequences(lengths, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t, c, generator=g, dtype=torch.float64) * 2 + 1 for t in lengths]


def test_pad_sequences_mask_and_values():
    seqs = _sequences([5, 2, 3])
    x, mask = inv.pad_sequences(seqs, length=7, value=-1.0)
    assert x.shape == (3, 7, 6) and mask.sum(1).tolist() == [5, 2, 3]
    assert torch.equal(x[1, :2], seqs[1]) and (x[1, 2:] == -1).all()


def test_masked_batch_norm_equals_batchnorm_on_the_real_tokens():
    seqs = _sequences([7, 3, 5, 1])
    x, mask = inv.pad_sequences(seqs, length=9)
    w = torch.linspace(0.5, 2, 6, dtype=torch.float64)
    b = torch.linspace(-1, 1, 6, dtype=torch.float64)
    got = inv.masked_batch_norm(x, mask, w, b)
    bn = torch.nn.BatchNorm1d(6, dtype=torch.float64)
    bn.weight.data.copy_(w)
    bn.bias.data.copy_(b)
    torch.testing.assert_close(got[mask], bn(torch.cat(seqs)))       # torch.nn as the oracle
    assert (got[~mask] == 0).all()


def test_masked_batch_norm_ignores_padding_values_and_amount():
    seqs = _sequences([4, 6, 2], seed=1)
    x1, m1 = inv.pad_sequences(seqs, value=0.0)
    x2, m2 = inv.pad_sequences(seqs, length=20, value=123.0)
    torch.testing.assert_close(inv.masked_batch_norm(x1, m1)[m1], inv.masked_batch_norm(x2, m2)[m2])


def test_masked_batch_norm_with_a_full_mask_is_batch_norm():
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    want = torch.nn.functional.batch_norm(x.reshape(15, 4), None, None, training=True)
    got = inv.masked_batch_norm(x, torch.ones(3, 5, dtype=torch.bool))
    torch.testing.assert_close(got.reshape(15, 4), want)


def test_masked_batch_norm_gradients_ignore_padding():
    seqs = _sequences([3, 5])
    x, mask = inv.pad_sequences(seqs)
    x.requires_grad_(True)
    y = inv.masked_batch_norm(x, mask)
    (y * torch.randn_like(y)).sum().backward()
    assert (x.grad[~mask] == 0).all() and x.grad[mask].abs().max() > 0
    assert torch.autograd.gradcheck(lambda t: inv.masked_batch_norm(t, mask), (x.detach().clone()
                                                                              .requires_grad_(),))


def test_transforms_and_padding_stay_on_the_inputs_device():
    """Factors drawn on the CPU generator move to the weight's device; padded batches and masks
    follow the sequences. The meta device stands in for a GPU here (tests/test_cuda.py has both)."""
    weight = torch.randn(4, 3, dtype=torch.float64, device="meta")
    x = torch.randn(5, 3, dtype=torch.float64, device="meta")
    for name in inv.TRANSFORMS:
        w2, x2 = inv.transform(name, weight, x)
        assert w2.device == x2.device == weight.device and w2.shape == weight.shape, name
    padded, mask = inv.pad_sequences([torch.randn(2, 3, device="meta"),
                                             torch.randn(3, 3, device="meta")])
    assert padded.device == mask.device == weight.device and padded.shape == (2, 3, 3)
