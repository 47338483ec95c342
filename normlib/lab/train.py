"""One train loop for every chapter: SGD (or any optimizer) on mini-batches, returns a history."""
import math

import torch
from torch import nn

from .data import batches
from .setup import progress


@torch.no_grad()
def evaluate(model, x, y, batch_size=1024):
    """(mean cross-entropy, accuracy) of model on (x, y) in eval mode; restores the mode."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        loss += nn.functional.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return loss / len(x), correct / len(x)


def accuracy(model, x, y):
    """Eval-mode accuracy of model on (x, y)."""
    return evaluate(model, x, y)[1]


def train(model, data, steps, lr, batch_size=32, optimizer=None, eval_every=None, seed=0,
          weight_decay=0.0, momentum=0.0, schedule=None, step_hook=None, clip=None, desc=None):
    """Train `model` on `data` (a lab.Data) with cross-entropy for `steps` mini-batch steps.

    optimizer: a torch.optim instance, or None for SGD(lr, momentum, weight_decay).
    schedule: optional function step -> learning-rate multiplier (e.g. a warm-up).
    step_hook: optional function (step, model, batch_x, batch_y) called after each update.
    clip: optional max global gradient norm.
    Returns a dict of lists: step, loss (training batch), and at every `eval_every` steps
    (default: about 20 points) eval_step, test_loss, test_acc, train_acc. A non-finite loss stops
    training early and sets history["diverged"] = True.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                       weight_decay=weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    eval_every = eval_every or max(1, steps // 20)
    hist = {"step": [], "loss": [], "eval_step": [], "test_loss": [], "test_acc": [],
            "train_acc": [], "diverged": False}
    stream = batches(len(data.x_train), batch_size, gen)
    model.train()
    for step in progress(range(1, steps + 1), desc=desc, leave=False):
        if schedule is not None:
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * schedule(step)
        idx = next(stream).to(data.x_train.device)
        xb, yb = data.x_train[idx], data.y_train[idx]
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if step_hook is not None:
            step_hook(step, model, xb, yb)
        if not log_step(hist, step, loss.item(), step % eval_every == 0 or step == steps,
                        lambda: _evaluations(model, data)):
            break
    return hist


def _evaluations(model, data):
    """What `train` records at an evaluation step."""
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
    return {"test_loss": test_loss, "test_acc": test_acc,
            "train_acc": evaluate(model, data.x_train, data.y_train)[1]}


def log_step(hist, step, loss, evaluate_now, evaluations):
    """Append step and loss to the history `hist`; when `evaluate_now`, append eval_step and every
    value of the dict evaluations() under its key. A non-finite loss sets hist["diverged"] and
    returns False (stop training); otherwise True. The train loops of lab and lab.transformer
    share it."""
    hist["step"].append(step)
    hist["loss"].append(loss)
    if not math.isfinite(loss):
        hist["diverged"] = True
        return False
    if evaluate_now:
        hist["eval_step"].append(step)
        for key, value in evaluations().items():
            hist[key].append(value)
    return True
