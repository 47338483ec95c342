"""normlib.lab: data without downloads, models with norm=, a deterministic train loop."""
import pytest
import torch

import normlib.torch as nt
from normlib import lab


def test_digits_is_bundled_and_split():
    d = lab.digits()
    assert d.x_train.shape == (1348, 64) and d.x_test.shape == (449, 64)
    assert d.x_train.min() >= 0 and d.x_train.max() <= 1 and d.num_classes == 10
    assert lab.digits(images=True).x_train.shape == (1348, 1, 8, 8)


def test_recorded_gpu_results_ship_inside_normlib():
    rec = lab.recorded("10-gpu-h100")                      # read from the package, no download
    assert "H100" in rec["device"] and rec["date"].startswith("20")
    shapes = {(r["dtype"], tuple(r["shape"])) for r in rec["results"]}
    assert ("bf16", (32768, 4096)) in shapes and ("fp32", (4096, 16384)) in shapes
    with pytest.raises(ValueError, match="10-gpu-h100"):   # the error lists what ships
        lab.recorded("no-such-run")


@pytest.mark.parametrize("norm, cls", [("batch", nt.BatchNorm1d), ("layer", nt.LayerNorm),
                                       ("rms", nt.RMSNorm), ("group", nt.GroupNorm)])
def test_mlp_uses_normlib_layers_and_drops_the_redundant_bias(norm, cls):
    m = lab.MLP([8, 16, 16, 3], norm=norm)
    assert sum(isinstance(x, cls) for x in m) == 2
    assert m[0].bias is None and m[-1].bias is not None
    assert len(m.pre_activations(torch.randn(4, 8))) == 2
    plain = lab.MLP([8, 16, 16, 3], activation=torch.nn.Identity)   # norm=None is Identity too
    assert len(plain.pre_activations(torch.randn(4, 8))) == 2


@pytest.mark.parametrize("norm, cls", [("batch", nt.BatchNorm2d), ("group", nt.GroupNorm),
                                       ("instance", nt.InstanceNorm2d), ("layer", nt.GroupNorm)])
def test_cnn_norms(norm, cls):
    m = lab.SmallCNN(norm=norm)
    assert any(isinstance(x, cls) for x in m.modules())
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_bad_norm_names_say_what_is_allowed():
    with pytest.raises(ValueError, match="norm must be one of"):
        lab.norm_layer("batchnorm", 4)
    with pytest.raises(ValueError, match="spatial"):
        lab.norm_layer("instance", 4)


def test_train_learns_and_is_deterministic():
    d = lab.digits()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = lab.MLP([64, 32, 10], norm="batch")
        runs.append(lab.train(model, d, steps=150, lr=0.2, seed=1))
    assert runs[0]["loss"] == runs[1]["loss"]
    assert runs[0]["test_acc"][-1] > 0.85
    assert len(runs[0]["eval_step"]) == len(runs[0]["test_acc"]) > 0


def test_train_reports_divergence():
    d = lab.digits()
    torch.manual_seed(0)
    hist = lab.train(lab.MLP([64, 32, 10], activation=torch.nn.Identity), d, steps=50, lr=100)
    assert hist["diverged"] and len(hist["loss"]) < 50


def test_quiet_switch(monkeypatch):
    monkeypatch.setenv("NORMBOOK_QUIET", "1")
    assert lab.is_quiet()
    assert lab.progress([1, 2]) == [1, 2]


def test_style_turns_missing_glyphs_into_errors():
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import warnings
    with warnings.catch_warnings():
        lab.style()
        fig, ax = plt.subplots()
        ax.set_title("\u5185\u90e8\u534f\u53d8\u91cf\u504f\u79fb")   # CJK: no glyphs in DejaVu Sans
        with pytest.raises(UserWarning, match="missing from"):
            fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)


def test_plot_save_writes_only_where_normbook_figures_points(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from normlib.lab import plot
    fig = plt.figure()
    monkeypatch.delenv("NORMBOOK_FIGURES", raising=False)
    monkeypatch.chdir(tmp_path)
    plot.save(fig, "ch/fig")
    assert not any(tmp_path.rglob("*"))
    monkeypatch.setenv("NORMBOOK_FIGURES", str(tmp_path / "figs"))
    plot.save(fig, "ch/fig")
    assert (tmp_path / "figs" / "ch" / "fig.png").stat().st_size > 0
    plt.close(fig)
