"""GPU benchmark: LayerNorm and RMSNorm forward and backward, in GB/s against the minimum bytes.

normlib (Triton kernels) vs torch eager, torch.compile (one compiled function per mode,
dynamic=False) and Liger-Kernel when it imports, plus the device-to-device copy bandwidth as the
ceiling, all timed with triton.testing.do_bench (the median run: a shared GPU disturbs it less).
Minimum bytes: forward reads x and writes y; backward reads x and dy and writes dx; parameters and
per-row statistics are added on top.

    python benchmarks/gpu_norms.py [--dtypes bf16 fp32] [--shapes 32768x4096 ...] [--no-compile]
"""
import argparse

import torch
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="*", default=["bf16", "fp32"])
    parser.add_argument("--shapes", nargs="*", default=SHAPES)
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, torch {torch.__version__}, triton {triton.__version__}\n")
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for shape in args.shapes:
            m, n = map(int, shape.split("x"))
            x = torch.randn(m, n, device="cuda", dtype=dtype)
            size = x.numel() * x.element_size()
            copy = gbps(2 * size, triton.testing.do_bench(lambda: x.clone(),
                                                          return_mode="median"))
            print(f"{dname} {m}x{n}: device copy {copy:,.0f} GB/s")
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
                best_f = max(r[1] for r in rows if r[0] != "normlib")
                best_b = max(r[2] for r in rows if r[0] != "normlib")
                for name, f, b in rows:
                    print(f"  {kind + 'norm':<9} {name:<14} fwd {f:7,.0f} GB/s ({f / best_f:4.2f} of "
                          f"best peer, {f / copy:4.0%} of copy)   bwd {b:7,.0f} GB/s "
                          f"({b / best_b:4.2f} of best peer, {b / copy:4.0%} of copy)")


if __name__ == "__main__":
    main()
