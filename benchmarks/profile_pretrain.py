# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Where does a MixedAE training step spend its time compared with ViTMAE's? (torch.profiler, CPU or CUDA)

For each model it runs `--warmup` untimed training steps, then profiles `--steps` steps (the models
interleaved, one profiler session per step) and prints, per step: wall time, total self time by operator, the autograd backward nodes, and the time inside the
modules/functions that differ between the models (homologous attention, mixing/unmixing, losses). The
last table lines up the operators of all models so that the extra cost of MixedAE shows as a
difference against ViTMAE.

    PYTHONPATH=src python3 benchmarks/profile_pretrain.py --size small --precision fp32 --attn sdpa --batch-size 8

Uses the model builders of `bench_pretrain.py`, so the models are the ones the benchmark measures.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_pretrain  # noqa: E402


def instrument(model) -> list:
    """Label the forward of the parts MixedAE adds with `record_function`, without touching the model code.

    Returns the handles/undo functions; every label is `region::<name>`.
    """
    undo = []

    def wrap_method(owner, name, label):
        original = getattr(owner, name)
        # Restore exactly what was there (a classmethod descriptor stays one); instances get their attribute removed.
        stored = vars(owner).get(name) if isinstance(owner, type) or hasattr(owner, "__file__") else None

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            with record_function(f"region::{label}"):
                return original(*args, **kwargs)

        setattr(owner, name, wrapped)
        undo.append(lambda: setattr(owner, name, stored) if stored is not None else delattr(owner, name))

    # Module-level functions of the MixedAE modeling/layers modules, looked up where the callers find them.
    with contextlib.suppress(ImportError):
        from transformers_mixedae.models import modeling_mixedae

        wrap_method(modeling_mixedae, "homologous_topk_attention_forward", "homologous_attention")
        wrap_method(modeling_mixedae, "homologous_contrastive_loss", "homologous_contrastive_loss")
        wrap_method(modeling_mixedae, "masked_reconstruction_loss", "reconstruction_loss")
        wrap_method(modeling_mixedae.MixedAEMixing, "mix", "mixing.mix")
        wrap_method(modeling_mixedae.MixedAEMixing, "unmix", "mixing.unmix")
        wrap_method(modeling_mixedae.MixedAEMixing, "loss_mask", "mixing.loss_mask")
        wrap_method(modeling_mixedae.MixedAEMixing, "from_noise", "masking (MixedAE from_noise)")
    # transformers' ViTMAE: its masking is a method (its loss is inline in `forward`).
    embeddings = getattr(getattr(model, "vit", None), "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "random_masking"):
        wrap_method(embeddings, "random_masking", "masking (ViTMAE random_masking)")

    hooks = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        label = None
        if kind.endswith("Embeddings") and "Patch" not in kind:
            label = "embeddings"
        elif name.endswith("decoder") and hasattr(module, "decoder_layers"):
            label = "decoder"
        elif kind in ("ViTMAEModel", "MixedAEModel", "CAEModel"):
            label = "encoder (incl. embeddings)"
        if label is None:
            continue

        def pre_hook(_module, _inputs, label=label):
            context = record_function(f"region::{label}")
            context.__enter__()
            _module._profile_contexts = getattr(_module, "_profile_contexts", []) + [context]

        def post_hook(_module, _inputs, _outputs):
            _module._profile_contexts.pop().__exit__(None, None, None)

        hooks.append(module.register_forward_pre_hook(pre_hook))
        hooks.append(module.register_forward_hook(post_hook))
    undo.extend(hook.remove for hook in hooks)
    return undo


def build(name: str, args, device, pixel_values) -> dict:
    torch.manual_seed(0)
    model = bench_pretrain.BUILDERS[name](args.size, args.attn).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.5e-4)
    inputs = bench_pretrain.model_inputs(model, pixel_values)
    return dict(
        name=name,
        step=lambda: bench_pretrain.training_step(model, optimizer, inputs, device, args.precision),
        model=model,
        profiled_ms=[],
        profiled_cpu_ms=[],
        wall_ms=[],
        self_ms=collections.Counter(),
        total_ms=collections.Counter(),
        counts=collections.Counter(),
    )


def profile_models(names: list[str], args, device, pixel_values) -> list[dict]:
    """Warm-up, profiled and plain steps, the models interleaved (rotating order) so that load from other
    processes falls on all of them alike; one profiler session per step and model, summed."""
    runs = [build(name, args, device, pixel_values) for name in names]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def rotation(index):
        shift = index % len(runs)
        return runs[shift:] + runs[:shift]

    for index in range(args.warmup):
        for run in rotation(index):
            run["step"]()
    for index in range(args.steps):
        for run in rotation(index):
            undo = instrument(run["model"])
            try:
                bench_pretrain.synchronize(device)
                start, start_cpu = time.perf_counter(), time.process_time()
                with profile(activities=activities, record_shapes=False) as profiler:
                    run["step"]()
                    bench_pretrain.synchronize(device)
                run["profiled_ms"].append((time.perf_counter() - start) * 1e3)
                run["profiled_cpu_ms"].append((time.process_time() - start_cpu) * 1e3)
            finally:
                for function in reversed(undo):
                    function()
            # On a GPU the kernels' own time, not the host's time to launch them.
            on_device = device.type == "cuda"
            for event in profiler.key_averages():
                key = event.key
                if key.startswith("region::") or key.startswith("autograd::engine::evaluate_function"):
                    total = event.device_time_total if on_device else event.cpu_time_total
                    run["total_ms"][key] += total / 1e3 / args.steps
                else:
                    own = event.self_device_time_total if on_device else event.self_cpu_time_total
                    run["self_ms"][key] += own / 1e3 / args.steps
                run["counts"][key] += event.count / args.steps
    for index in range(args.steps):
        for run in rotation(index):
            bench_pretrain.synchronize(device)
            start = time.perf_counter()
            run["step"]()
            bench_pretrain.synchronize(device)
            run["wall_ms"].append((time.perf_counter() - start) * 1e3)
    for run in runs:
        run["wall_ms_median"] = statistics.median(run["wall_ms"])
        run["profiled_ms_median"] = statistics.median(run["profiled_ms"])
        run["profiled_cpu_ms_median"] = statistics.median(run["profiled_cpu_ms"])
        run["self_total_ms"] = sum(run["self_ms"].values())
        del run["step"], run["model"]
    return runs


def print_comparison(results: list[dict], key: str, title: str, limit: int) -> None:
    names = [result["name"] for result in results]
    union = collections.Counter()
    for result in results:
        for op, value in result[key].items():
            union[op] = max(union[op], value)
    anchor = results[0]
    print(
        f"\n### {title}\n\nms per step (calls per step), then the share of that model's summed operator self time "
        "(shares cancel load from other processes that slows every operator alike), then the difference of shares.\n"
    )
    header = (
        "| op | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"% {n}" for n in names)
        + " | "
        + " | ".join(f"% {n} - % {anchor['name']}" for n in names[1:])
        + " |"
    )
    print(header)
    print("|" + "---|" * (1 + 3 * len(names) - 1))

    def share(result, op):
        return 100.0 * result[key].get(op, 0.0) / result["self_total_ms"]

    ranked = sorted(
        union, key=lambda op: -max(abs(share(r, op) - share(anchor, op)) for r in results) - 1e-3 * union[op]
    )
    for op in ranked[:limit]:
        cells = [f"{r[key].get(op, 0.0):.1f} ({r['counts'].get(op, 0):.0f})" for r in results]
        shares = [f"{share(r, op):.2f}" for r in results]
        deltas = [f"{share(r, op) - share(anchor, op):+.2f}" for r in results[1:]]
        print(f"| `{op}` | " + " | ".join(cells + shares + deltas) + " |")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=list(bench_pretrain.SIZES))
    parser.add_argument("--precision", default="fp32", choices=list(bench_pretrain.PRECISIONS))
    parser.add_argument("--attn", default="sdpa", choices=list(bench_pretrain.ATTENTION))
    parser.add_argument("--models", default="vitmae,mixedae-mae,mixedae")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=25, help="rows per table")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = bench_pretrain.parse_list(args.models, bench_pretrain.MODELS, "models")
    image_size = bench_pretrain.SIZES[args.size]["encoder"].image_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    pixel_values = torch.randn(args.batch_size, 3, image_size, image_size, generator=generator)
    pixel_values = pixel_values.to(device)
    results = profile_models(models, args, device, pixel_values)
    print(
        f"# profile: {args.size} {args.precision} {args.attn} batch {args.batch_size}, {args.steps} profiled steps "
        f"after {args.warmup} warm-up, {torch.get_num_threads()} threads"
    )
    print(
        "\n| model | step ms (no profiler, median) | step ms (profiled, median) | process CPU ms (profiled, median) "
        "| sum of op self time ms |"
    )
    print("|---|---|---|---|---|")
    for result in results:
        print(
            f"| {result['name']} | {result['wall_ms_median']:.0f} | {result['profiled_ms_median']:.0f} | "
            f"{result['profiled_cpu_ms_median']:.0f} | {result['self_total_ms']:.0f} |"
        )
    print_comparison(results, "total_ms", "Regions and backward nodes (inclusive time)", args.limit)
    print_comparison(results, "self_ms", "Operators (self time)", args.limit)
    return results


if __name__ == "__main__":
    main()
