"""GPU benchmark: LayerNorm and RMSNorm forward and backward, in GB/s against the minimum bytes.

normlib (Triton kernels) vs torch eager, torch.compile (one compiled function per mode,
dynamic=False) and Liger-Kernel when it imports, plus the device-to-device copy bandwidth as the
ceiling, all timed with triton.testing.do_bench (the median run: a shared GPU disturbs it less).
Minimum bytes: forward reads x and writes y; backward reads x and dy and writes dx; parameters and
per-row statistics are added on top.

    python benchmarks/gpu_norms.py [--dtypes bf16 fp32] [--shapes 32768x4096 ...] [--no-compile]
                                   [--json results.json]

--json also measures the two roofs of a roofline (a Triton kernel doing K fused multiply-adds per
float32 it reads and writes, for K = 1 ... 1024: achieved FLOP/s against arithmetic intensity; and
tensor-core matmul FLOP/s) and writes everything, with the device, the date and the versions, to
the file, after each shape (an interrupted run keeps what it measured). The book's chapter "Fast
norms on GPU" reads that file, shipped as normlib/lab/recorded/10-gpu-h100.json.
"""
import argparse
import datetime
import importlib.metadata
import json

import torch
import triton
import triton.language as tl
import triton.testing

import normlib.torch as nt

SHAPES = ["32768x4096", "16384x4096", "8192x8192", "4096x16384", "32768x1024"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def implementations(kind, n, dtype, compile=True):
    """{name: module} for one norm kind ("layer" or "rms") and width n."""
    make = {"layer": lambda m: m.LayerNorm(n), "rms": lambda m: m.RMSNorm(n, eps=1e-6)}[kind]
    impls = {"normlib": make(nt), "torch eager": make(torch.nn)}
    if compile:
        impls["torch.compile"] = torch.compile(make(torch.nn), dynamic=False)
    try:
        if kind == "layer":
            from liger_kernel.transformers import LigerLayerNorm
            impls["liger"] = LigerLayerNorm(n)
        else:
            from liger_kernel.transformers import LigerRMSNorm
            impls["liger"] = LigerRMSNorm(n, eps=1e-6)
    except ImportError:
        pass
    return {k: v.to("cuda", dtype) for k, v in impls.items()}


def gbps(nbytes, ms):
    return nbytes / ms / 1e6


@triton.jit
def _fma_kernel(X, Y, n, a, b, K: tl.constexpr, BLOCK: tl.constexpr):
    """y = x after K steps of x = x * a + b: 2K FLOPs per 8 bytes moved (float32 in and out)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < n, other=0.0)
    for _ in range(K):
        x = x * a + b
    tl.store(Y + offs, x, mask=offs < n)


def roofline(numel=2 ** 26, block=1024):
    """The two roofs, measured: the FMA sweep (intensity K/4 FLOP/byte) and matmul FLOP/s."""
    x = torch.randn(numel, device="cuda")
    y = torch.empty_like(x)
    sweep = []
    for k in [2 ** i for i in range(11)]:
        run = lambda: _fma_kernel[(triton.cdiv(numel, block),)](x, y, numel, 0.999, 0.001,
                                                                  K=k, BLOCK=block, num_warps=4)
        ms = triton.testing.do_bench(run, return_mode="median")
        sweep.append({"flops_per_element": 2 * k, "bytes_per_element": 8, "ms": ms,
                      "gflops": 2 * k * numel / ms / 1e6, "gbps": gbps(8 * numel, ms)})
    matmul = {}
    for dname, n in [("bf16", 8192), ("fp32", 4096)]:   # fp32: no TF32 (torch's default)
        a = torch.randn(n, n, device="cuda", dtype=DTYPES[dname])
        ms = triton.testing.do_bench(lambda: a @ a, return_mode="median")
        matmul[dname] = {"n": n, "ms": ms, "tflops": 2 * n ** 3 / ms / 1e9}
    return {"fma_sweep": sweep, "matmul": matmul}


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="*", default=["bf16", "fp32"])
    parser.add_argument("--shapes", nargs="*", default=SHAPES)
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the results and the roofline's roofs to this file")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, torch {torch.__version__}, triton {triton.__version__}\n")
    record = {"device": props.name, "sm_count": props.multi_processor_count,
              "date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "triton": triton.__version__, "cuda": torch.version.cuda,
              "liger_kernel": _version("liger_kernel"), "compile": not args.no_compile,
              "timing": "triton.testing.do_bench, median of the runs, ms",
              "bytes": "fwd: 2 * size + params; bwd: 3 * size + 2 * params + stats "
                       "(size = x's bytes, params = the weights' and biases' bytes, "
                       "stats = 8 bytes a row: mean and rstd in float32)",
              "results": []}

    def write():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=1)
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for shape in args.shapes:
            m, n = map(int, shape.split("x"))
            x = torch.randn(m, n, device="cuda", dtype=dtype)
            size = x.numel() * x.element_size()
            copy = gbps(2 * size, triton.testing.do_bench(lambda: x.clone(),
                                                          return_mode="median"))
            print(f"{dname} {m}x{n}: device copy {copy:,.0f} GB/s")
            entry = {"dtype": dname, "shape": [m, n], "copy_bytes": 2 * size, "copy_gbps": copy,
                     "norms": {}}
            torch._dynamo.reset()   # a fresh compile per shape: no recompile limit, no eager fallback
            for kind in ("layer", "rms"):
                params = n * x.element_size() * (2 if kind == "layer" else 1)
                stats = m * 4 * 2
                rows = []
                for name, mod in implementations(kind, n, dtype, not args.no_compile).items():
                    xg = x.clone().requires_grad_()
                    fwd = triton.testing.do_bench(lambda: mod(xg), return_mode="median")
                    y = mod(xg)
                    dy = torch.randn_like(y)
                    bwd = triton.testing.do_bench(
                        lambda: torch.autograd.grad(y, [xg, *mod.parameters()], dy,
                                                    retain_graph=True), return_mode="median")
                    rows.append((name, gbps(2 * size + params, fwd),
                                 gbps(3 * size + 2 * params + stats, bwd)))
                    entry["norms"].setdefault(kind, {})[name] = {
                        "fwd_ms": fwd, "bwd_ms": bwd, "fwd_bytes": 2 * size + params,
                        "bwd_bytes": 3 * size + 2 * params + stats,
                        "fwd_gbps": rows[-1][1], "bwd_gbps": rows[-1][2]}
                best_f = max(r[1] for r in rows if r[0] != "normlib")
                best_b = max(r[2] for r in rows if r[0] != "normlib")
                for name, f, b in rows:
                    print(f"  {kind + 'norm':<9} {name:<14} fwd {f:7,.0f} GB/s ({f / best_f:4.2f} of "
                          f"best peer, {f / copy:4.0%} of copy)   bwd {b:7,.0f} GB/s "
                          f"({b / best_b:4.2f} of best peer, {b / copy:4.0%} of copy)")
            record["results"].append(entry)
            write()
            del x
    if args.json:
        record["roofline"] = roofline()
        write()
        fma = max(r["gflops"] for r in record["roofline"]["fma_sweep"]) / 1e3
        mm = ", ".join(f"{k} {v['tflops']:,.0f}" for k, v in record["roofline"]["matmul"].items())
        print(f"\nroofs: float32 FMA {fma:,.1f} TFLOP/s; matmul TFLOP/s {mm}; wrote {args.json}")


if __name__ == "__main__":
    main()
