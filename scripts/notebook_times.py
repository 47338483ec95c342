"""Execute every chapter in _toc.yml and print its execution time against its CPU budget.

    .venv/bin/python scripts/notebook_times.py [stem ...]

Budgets are the issues' limits for a 2-core CPU with the default (FULL off) settings; on a GPU
machine the same script gives the per-notebook times of the GPU run. Exit status 1 if a notebook
fails; a notebook over budget is flagged in the table (machines differ, so it is not a failure).
"""
import os
import pathlib
import platform
import re
import sys
import time

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toc_notebooks import ROOT, notebooks  # noqa: E402

BUDGET_S = {"08-pre-post-norm": 120, "09-batch-size-syncbn": 150, "10-fast-norms-gpu": 90,
            "11-stabilizers": 120}
DEFAULT_BUDGET_S = 90


def execute(nb, folder, timeout=1800):
    """Run notebook `nb` in `folder` (in place); None, or the error's type and last line."""
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}})
    try:
        client.execute()
    except Exception as e:  # noqa: BLE001 - report any failure and go on with the next chapter
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()     # no terminal colours
        return f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"
    return None


def run(path):
    """(seconds, error or None) for executing one notebook in its own folder."""
    start = time.perf_counter()
    error = execute(nbformat.read(path, as_version=4), path.parent)
    return time.perf_counter() - start, error


def main():
    os.environ.setdefault("NORMBOOK_QUIET", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as scripts/test.sh
    paths = [ROOT / p for p in notebooks(sys.argv[1:])]
    try:
        import torch
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    except ImportError:
        device = "CPU"
    print(f"{platform.node()}, {os.cpu_count()} CPUs, device: {device}\n")
    print(f"{'chapter':<30} {'seconds':>8} {'budget':>7}  status")
    failed, total = 0, 0.0
    for path in paths:
        seconds, error = run(path)
        total += seconds
        budget = BUDGET_S.get(path.stem, DEFAULT_BUDGET_S)
        status = f"FAILED {error}" if error else ("over budget" if seconds > budget else "ok")
        failed += bool(error)
        print(f"{path.stem:<30} {seconds:>8.1f} {budget:>7}  {status}", flush=True)
    print(f"{'total':<30} {total:>8.1f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
