# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Micro-benchmarks of MixedAE's hot paths against candidate rewrites that compute the same result.

Each section times forward + backward of the package's current function and of one or more
candidates, interleaved (round-robin, median of `--repeats`), and checks that every candidate gives
the current result (outputs and input gradients) before timing it:

* homologous top-k attention (`modeling_mixedae.homologous_topk_attention_forward`, eager and SDPA paths)
  against the path before the selection left autograd, `kthvalue` instead of `topk`, no top-k
  accuracy diagnostic; plain global attention (eager and SDPA) as the floor;
* `MixedAEMixing.unmix` (+ the decoder's [CLS] concatenation): one row gather from the group's tokens
  and the mask token instead of repeat_interleave + where + cat + gather;
* the homologous contrastive loss, the loss mask and `mix`, for their share of a step;
* the AdamW step: for-loop (torch's CPU default), `foreach=True`, `fused=True`;
* `paths`: the package's two homologous attention paths (`HOMOLOGOUS_ATTENTION_PATHS`: "single_pass",
  "sdpa_mask"), forced, one layer, against ViTMAE's attention for the same images; the measurement behind
  `homologous_attention_path`'s rule;
* `step`: whole training steps (forward, backward, AdamW), interleaved: transformers' ViTMAE (SDPA) and MixedAE
  (r = 0.25, homologous attention in every layer, SDPA implementation) with each homologous path forced and with
  the package's rule; the ratio MixedAE / ViTMAE is the paper's "about 3% overhead" claim.

    PYTHONPATH=src python3 benchmarks/microbench_mixedae.py --size small --batch-size 8 --repeats 30
    PYTHONPATH=src python3 benchmarks/microbench_mixedae.py --sections paths,step --size small --batch-size 8 \
        --repeats 5 --threads 1 --clock cpu --json benchmarks/results/raw/microbench_paths_step_small_b8.json

`--json` writes every row with the machine, the command line and the load average (`os.getloadavg`) at the start
and the end: the machine this project measures on is shared.

The candidates live here only; nothing in the package is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_pretrain  # noqa: E402,F401  (puts src/ on the path when the package is not installed)

from transformers_mixedae.models import modeling_mixedae, vit_layers  # noqa: E402


# ---------------------------------------------------------------------------------------------- timing
CLOCK = {"clock": time.perf_counter}


def interleaved_medians(cases: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds of each zero-argument callable, the callables run in turn so load hits all alike."""
    clock = CLOCK["clock"]
    timings = {name: [] for name in cases}
    for index in range(warmup + repeats):
        for name, function in cases.items():
            start = clock()
            function()
            elapsed = clock() - start
            if index >= warmup:
                timings[name].append(elapsed)
    return {name: statistics.median(values) for name, values in timings.items()}


def report(title: str, medians: dict, baseline: str, what: str = "fwd+bwd") -> list[dict]:
    print(f"\n### {title}\n")
    print(f"| variant | ms (median, {what}) | vs {baseline} |")
    print("|---|---|---|")
    rows = []
    for name, seconds in medians.items():
        ratio = seconds / medians[baseline]
        print(f"| {name} | {seconds * 1e3:.2f} | {ratio:.2f}x |")
        rows.append(dict(section=title, variant=name, seconds=seconds, ratio=ratio))
    return rows


def forward_backward(function, inputs, grad_output=None):
    """Run `function(*inputs)` and back-propagate a fixed cotangent; returns output and input grads."""
    for tensor in inputs:
        if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            tensor.grad = None
    output = function(*inputs)
    if isinstance(output, tuple):
        output = output[0]
    if grad_output is None:
        grad_output = torch.ones_like(output)
    output.backward(grad_output)
    return output.detach(), [t.grad.clone() for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


def assert_same(reference, candidate, name: str, atol: float) -> None:
    ref_out, ref_grads = reference
    out, grads = candidate
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=atol, msg=lambda m: f"{name} output: {m}")
    for ref_grad, grad in zip(ref_grads, grads):
        torch.testing.assert_close(grad, ref_grad, atol=atol, rtol=atol, msg=lambda m: f"{name} grad: {m}")


# ---------------------------------------------------------------------------------------------- homologous attention
class _Training(nn.Module):
    """Stands for the attention module: `.training` and `.config._attn_implementation` are read."""

    def __init__(self, implementation: str = "eager"):
        super().__init__()
        self.config = argparse.Namespace(_attn_implementation=implementation)


def current_homologous(query, key, value, segment_ids, topk, scaling, implementation="eager"):
    context = modeling_mixedae.HomologousAttentionContext(segment_ids=segment_ids, topk=topk)
    output, _ = modeling_mixedae.homologous_topk_attention_forward(
        _Training(implementation).train(), query, key, value, None, scaling, 0.0, context
    )
    return output


def before_homologous(query, key, value, segment_ids, topk, scaling):
    """The package's path before the selection left autograd: sorted top-k on the graph, per-layer diagnostic."""
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    keep = logits >= logits.topk(topk, dim=-1).values[..., -1:]
    keep[:, :, 0, :] = True
    weights = nn.functional.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1, dtype=torch.float32)
    diagnostic_only(keep, segment_ids)
    return torch.matmul(weights.to(query.dtype), value).transpose(1, 2).contiguous()


def _selection(logits: torch.Tensor, topk: int, method: str = "topk") -> torch.Tensor:
    """Boolean `(.., Lq, Lk)` of the kept keys, computed without autograd; the [CLS] query keeps every key.

    `method`: "topk" (sorted, as the package), "topk-unsorted" (`sorted=False`, then the minimum) or "kthvalue"."""
    with torch.no_grad():
        logits = logits.detach()
        num_keys = logits.shape[-1]
        topk = min(topk, num_keys)
        if method == "kthvalue":
            threshold = logits.kthvalue(num_keys - topk + 1, dim=-1, keepdim=True).values
        elif method == "topk-unsorted":
            threshold = logits.topk(topk, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        else:
            threshold = logits.topk(topk, dim=-1).values[..., -1:]
        threshold[..., :1, :] = float("-inf")
        return logits >= threshold


def candidate_detached_selection(query, key, value, segment_ids, topk, scaling, method="topk"):
    """Same math as the current path, selection outside autograd, no per-layer diagnostic."""
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    keep = _selection(logits, topk, method)
    weights = nn.functional.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1, dtype=torch.float32)
    return torch.matmul(weights.to(query.dtype), value).transpose(1, 2).contiguous()


def candidate_sdpa_mask(query, key, value, segment_ids, topk, scaling, method="topk-unsorted"):
    """Selection from logits computed without autograd, then fused SDPA with it as a boolean mask."""
    with torch.no_grad():
        logits = torch.matmul(query.detach(), key.detach().transpose(2, 3)) * scaling
    keep = _selection(logits, topk, method=method)
    output = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=keep, scale=scaling)
    return output.transpose(1, 2).contiguous()


def global_eager(query, key, value, segment_ids, topk, scaling):
    output, _ = vit_layers.eager_attention_forward(_Training().train(), query, key, value, None, scaling)
    return output


def global_sdpa(query, key, value, segment_ids, topk, scaling):
    return nn.functional.scaled_dot_product_attention(query, key, value, scale=scaling).transpose(1, 2).contiguous()


def diagnostic_only(keep: torch.Tensor, segment_ids: torch.Tensor):
    """What the current path adds per layer for `homologous_topk_accuracy` (no gradient)."""
    with torch.no_grad():
        same_source = segment_ids[:, None, 1:, None] == segment_ids[:, None, None, 1:]
        kept = keep[:, :, 1:, 1:]
        return (kept & same_source).sum().float() / kept.sum().clamp(min=1).float()


def bench_homologous_attention(config, batch_size: int, repeats: int, dtype) -> list[dict]:
    group = config.group_size
    num_kept = config.num_kept()
    sequences, length = batch_size // group, 1 + num_kept
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    topk = config.resolved_homologous_topk()
    scaling = head_dim**-0.5
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(sequences, heads, length, head_dim, generator=generator, dtype=dtype).requires_grad_()
        for _ in range(3)
    ]
    slots = torch.arange(num_kept) % group
    segment_ids = torch.cat([torch.tensor([-1]), slots]).expand(sequences, -1)
    grad_output = torch.randn(sequences, length, heads, head_dim, generator=generator, dtype=dtype)
    arguments = (*tensors, segment_ids, topk, scaling)

    def run(function, **kwargs):
        return lambda: forward_backward(lambda *a: function(*a, **kwargs), arguments, grad_output)

    candidates = {
        "package, eager (selection outside autograd, unsorted top-k, diagnostic)": run(current_homologous),
        "package, sdpa (same selection as a boolean SDPA mask, diagnostic)": run(
            current_homologous, implementation="sdpa"
        ),
        "before: top-k in autograd (sorted) + diagnostic": run(before_homologous),
        "selection outside autograd (topk), no diagnostic": run(candidate_detached_selection),
        "selection outside autograd (topk sorted=False), no diagnostic": run(
            candidate_detached_selection, method="topk-unsorted"
        ),
        "selection outside autograd (kthvalue), no diagnostic": run(candidate_detached_selection, method="kthvalue"),
        "SDPA + boolean mask (topk sorted=False on no-grad logits)": run(candidate_sdpa_mask),
        "floor: global eager attention (no selection)": run(global_eager),
        "floor: global SDPA (no selection)": run(global_sdpa),
    }
    reference = candidates["package, eager (selection outside autograd, unsorted top-k, diagnostic)"]()
    # In bf16 the paths' logits round differently and may keep different keys near the k-th value: compare in fp32.
    if dtype == torch.float32:
        for name in list(candidates)[1:7]:
            assert_same(reference, candidates[name](), name, 1e-5)
    # What ViTMAE's encoder does for the same images: B sequences of 1 + N/4 tokens, global SDPA.
    mae_tensors = [
        torch.randn(batch_size, heads, 1 + config.num_patches // 4, head_dim, generator=generator, dtype=dtype)
        .requires_grad_()
        for _ in range(3)
    ]
    mae_grad = torch.randn(batch_size, 1 + config.num_patches // 4, heads, head_dim, generator=generator, dtype=dtype)
    candidates[f"reference: ViTMAE layer attention, {batch_size} x {1 + config.num_patches // 4} tokens, SDPA"] = (
        lambda: forward_backward(
            lambda *a: global_sdpa(*a, None, topk, scaling), mae_tensors, mae_grad
        )
    )
    medians = interleaved_medians(candidates, repeats)

    # Selection primitives alone (forward only, no grad), and the diagnostic.
    with torch.no_grad():
        logits = torch.matmul(tensors[0], tensors[1].transpose(2, 3)) * scaling
        keep = _selection(logits, topk)
    primitives = interleaved_medians(
        {
            "logits.topk(k)": lambda: logits.topk(topk, dim=-1),
            "logits.topk(k, sorted=False)": lambda: logits.topk(topk, dim=-1, sorted=False),
            "logits.kthvalue(L-k+1)": lambda: logits.kthvalue(length - topk + 1, dim=-1, keepdim=True),
            "top-k accuracy diagnostic (per layer)": lambda: diagnostic_only(keep, segment_ids),
            "masked_fill + fp32 softmax (forward)": lambda: nn.functional.softmax(
                logits.masked_fill(~keep, float("-inf")), dim=-1, dtype=torch.float32
            ),
        },
        repeats,
    )
    shape = f"({sequences}, {heads}, {length}, {head_dim}), k={topk}, {str(dtype).replace('torch.', '')}"
    rows = report(f"Homologous attention, one layer, q/k/v {shape}", medians, list(candidates)[0])
    print("\nforward-only primitives on the same logits:\n")
    print("| primitive | ms (median) |\n|---|---|")
    for name, seconds in primitives.items():
        print(f"| {name} | {seconds * 1e3:.3f} |")
        rows.append(dict(section="homologous primitives", variant=name, seconds=seconds))
    return rows


# ---------------------------------------------------------------------------------------------- unmixing
def unmix_index(mixing: modeling_mixedae.MixedAEMixing) -> torch.Tensor:
    """`(B, 1 + N)` row of every decoder input token in the flattened `(B/g * (2 + K), D)` source that holds, per
    group, its [CLS] latent, its K kept tokens and the mask token (integer work only)."""
    group, num_kept = mixing.group_size, mixing.num_kept
    batch_size = mixing.num_groups * group
    rank = mixing.ids_restore.repeat_interleave(group, dim=0)  # (B, N): position's rank in its group's order
    image_slot = torch.arange(batch_size, device=rank.device) % group
    owner = mixing.slot_of_kept[rank.clamp(max=num_kept - 1)]
    owned = (rank < num_kept) & (owner == image_slot[:, None])
    local = torch.where(owned, rank + 1, num_kept + 1)  # 0 is [CLS], 1..K the kept tokens, K+1 the mask token
    local = torch.cat([local.new_zeros(batch_size, 1), local], dim=1)
    group_index = torch.arange(batch_size, device=rank.device) // group
    return group_index[:, None] * (num_kept + 2) + local


def current_unmix_with_cls(hidden_states, mask_token, mixing):
    """What `MixedAEDecoder.forward` does between `decoder_embed` and the position embeddings."""
    patch_tokens = mixing.unmix(hidden_states[:, 1:, :], mask_token)
    cls_tokens = hidden_states[:, :1, :].repeat_interleave(mixing.group_size, dim=0)
    return torch.cat([cls_tokens, patch_tokens], dim=1)


def mae_style_unshuffle(hidden_states, mask_token, ids_restore):
    """MAE's decoder input for g = 1: append mask tokens, unshuffle with one gather, put [CLS] back in front."""
    batch_size, length, dim = hidden_states.shape
    num_masked = ids_restore.shape[1] + 1 - length
    tokens = torch.cat([hidden_states[:, 1:, :], mask_token.to(hidden_states.dtype).expand(batch_size, num_masked, dim)], 1)
    tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
    return torch.cat([hidden_states[:, :1, :], tokens], dim=1)


def candidate_unmix_gather(hidden_states, mask_token, index):
    sequences, _, dim = hidden_states.shape
    source = torch.cat([hidden_states, mask_token.to(hidden_states.dtype).expand(sequences, 1, dim)], dim=1)
    return nn.functional.embedding(index, source.reshape(-1, dim))


def bench_unmix(config, batch_size: int, repeats: int, label: str) -> list[dict]:
    group, num_patches, num_kept = config.group_size, config.num_patches, config.num_kept()
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(batch_size // group, num_patches, generator=generator)
    mixing = modeling_mixedae.MixedAEMixing.from_noise(noise, group, num_kept)
    dim = config.decoder_hidden_size
    hidden = torch.randn(batch_size // group, 1 + num_kept, dim, generator=generator).requires_grad_()
    mask_token = torch.randn(1, 1, dim, generator=generator).requires_grad_()
    grad_output = torch.randn(batch_size, 1 + num_patches, dim, generator=generator)
    index = unmix_index(mixing)
    cases = {
        "current: unmix (repeat_interleave + where + cat + gather) + [CLS] cat": lambda: forward_backward(
            lambda h, m: current_unmix_with_cls(h, m, mixing), (hidden, mask_token), grad_output
        ),
        "one embedding-gather from [CLS | kept | mask] rows": lambda: forward_backward(
            lambda h, m: candidate_unmix_gather(h, m, index), (hidden, mask_token), grad_output
        ),
        "index construction alone (integers, per step)": lambda: unmix_index(mixing),
    }
    if group == 1:
        cases["reference: MAE-style unshuffle (cat + gather + [CLS] cat), as ViTMAE's decoder"] = lambda: (
            forward_backward(lambda h, m: mae_style_unshuffle(h, m, mixing.ids_restore), (hidden, mask_token), grad_output)
        )
    names = list(cases)
    # Same result: exact in float64 (fp32 only reorders the sums of the mask token's gradient).
    hidden64, mask64 = hidden.detach().double().requires_grad_(), mask_token.detach().double().requires_grad_()
    assert_same(
        forward_backward(lambda h, m: current_unmix_with_cls(h, m, mixing), (hidden64, mask64), grad_output.double()),
        forward_backward(lambda h, m: candidate_unmix_gather(h, m, index), (hidden64, mask64), grad_output.double()),
        names[1],
        1e-12,
    )
    if group == 1:
        assert_same(
            forward_backward(lambda h, m: current_unmix_with_cls(h, m, mixing), (hidden64, mask64), grad_output.double()),
            forward_backward(
                lambda h, m: mae_style_unshuffle(h, m, mixing.ids_restore), (hidden64, mask64), grad_output.double()
            ),
            names[-1],
            1e-12,
        )
    medians = interleaved_medians(cases, repeats)
    return report(
        f"Unmixing to decoder input, {label}: B={batch_size}, g={group}, N={num_patches}, K={num_kept}, D={dim}",
        medians,
        names[0],
    )


# ---------------------------------------------------------------------------------------------- losses, mixing
def bench_small_parts(config, batch_size: int, repeats: int) -> list[dict]:
    group, num_patches, num_kept = config.group_size, config.num_patches, config.num_kept()
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(batch_size // group, num_patches, generator=generator)
    mixing = modeling_mixedae.MixedAEMixing.from_noise(noise, group, num_kept)
    tokens = torch.randn(batch_size // group, num_kept, config.hidden_size, generator=generator).requires_grad_()
    patch_tokens = torch.randn(batch_size, num_patches, config.hidden_size, generator=generator).requires_grad_()
    segment_ids = mixing.slot_of_kept.expand(mixing.num_groups, -1)
    temperature = config.homologous_contrastive_temperature

    def contrastive():
        tokens.grad = None
        modeling_mixedae.homologous_contrastive_loss(tokens, segment_ids, temperature).backward()

    def mix():
        patch_tokens.grad = None
        mixing.mix(patch_tokens).sum().backward()

    cases = {
        "homologous_contrastive_loss fwd+bwd": contrastive,
        "MixedAEMixing.from_noise (argsort x2)": lambda: modeling_mixedae.MixedAEMixing.from_noise(
            noise, group, num_kept
        ),
        "MixedAEMixing.loss_mask": lambda: mixing.loss_mask(),
        "MixedAEMixing.mix fwd+bwd": mix,
        "segment_ids()": lambda: mixing.segment_ids(),
    }
    medians = interleaved_medians(cases, repeats)
    print(f"\n### Other MixedAE-only parts, B={batch_size}, g={group}, K={num_kept}, D={config.hidden_size}\n")
    print("| part | ms (median) |\n|---|---|")
    rows = []
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.3f} |")
        rows.append(dict(section="small parts", variant=name, seconds=seconds))
    return rows


# ---------------------------------------------------------------------------------------------- optimizer
def bench_optimizer(size: str, repeats: int) -> list[dict]:
    """`torch.optim.AdamW` step over a ViTMAE-sized parameter set: for-loop (CPU default), foreach, fused."""
    torch.manual_seed(0)
    reference_model = bench_pretrain.build_vitmae(size, "sdpa")
    variants = {"for-loop (default on CPU)": dict(foreach=False), "foreach=True": dict(foreach=True)}
    variants["fused=True"] = dict(fused=True)
    states = {}
    for name, options in variants.items():
        parameters = [p.detach().clone().requires_grad_() for p in reference_model.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(1)
        for parameter in parameters:
            parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-3
        optimizer = torch.optim.AdamW(parameters, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, **options)
        optimizer.step()
        states[name] = (parameters, optimizer)
    names = list(variants)
    for name in names[1:]:
        for ours, theirs in zip(states[name][0], states[names[0]][0]):
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    medians = interleaved_medians({name: states[name][1].step for name in names}, repeats)
    count = sum(p.numel() for p in states[names[0]][0])
    return report(f"AdamW step, {size} ViTMAE parameters ({count / 1e6:.1f} M)", medians, names[0], "step")



# ---------------------------------------------------------------------------------------------- homologous paths
def forced_path_homologous(query, key, value, segment_ids, topk, scaling, path):
    context = modeling_mixedae.HomologousAttentionContext(segment_ids=segment_ids, topk=topk, path=path)
    output, _ = modeling_mixedae.homologous_topk_attention_forward(
        _Training("sdpa").train(), query, key, value, None, scaling, 0.0, context
    )
    return output


def bench_homologous_paths(config, batch_size: int, repeats: int, dtype) -> list[dict]:
    """One homologous layer's attention (fwd+bwd) on each forced path, and ViTMAE's attention for the same images."""
    group, num_kept = config.group_size, config.num_kept()
    sequences, length = batch_size // group, 1 + num_kept
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    topk, scaling = config.resolved_homologous_topk(), head_dim**-0.5
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(sequences, heads, length, head_dim, generator=generator, dtype=dtype).requires_grad_()
        for _ in range(3)
    ]
    segment_ids = torch.cat([torch.tensor([-1]), torch.arange(num_kept) % group]).expand(sequences, -1)
    grad_output = torch.randn(sequences, length, heads, head_dim, generator=generator, dtype=dtype)
    arguments = (*tensors, segment_ids, topk, scaling)
    cases = {
        f"{path} (forced)": (lambda path=path: forward_backward(
            lambda *a: forced_path_homologous(*a, path=path), arguments, grad_output
        ))
        for path in modeling_mixedae.HOMOLOGOUS_ATTENTION_PATHS
    }
    names = list(cases)
    assert_same(cases[names[0]](), cases[names[1]](), names[1], 1e-5 if dtype == torch.float32 else 2e-2)
    mae_length = 1 + config.num_patches // 4
    mae_tensors = [
        torch.randn(batch_size, heads, mae_length, head_dim, generator=generator, dtype=dtype).requires_grad_()
        for _ in range(3)
    ]
    mae_grad = torch.randn(batch_size, mae_length, heads, head_dim, generator=generator, dtype=dtype)
    cases[f"ViTMAE attention, {batch_size} x {mae_length} tokens, SDPA"] = lambda: forward_backward(
        lambda *a: global_sdpa(*a, None, topk, scaling), mae_tensors, mae_grad
    )
    medians = interleaved_medians(cases, repeats)
    shape = f"({sequences}, {heads}, {length}, {head_dim}), k={topk}, {str(dtype).replace('torch.', '')}"
    return report(f"Homologous attention paths, one layer, q/k/v {shape}", medians, names[0])


# ---------------------------------------------------------------------------------------------- whole step
def bench_step(size: str, batch_size: int, repeats: int, precision: str) -> list[dict]:
    """Training steps (forward, backward, AdamW) of ViTMAE and of MixedAE per homologous path, interleaved."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    models = {"vitmae (sdpa)": bench_pretrain.build_vitmae(size, "sdpa")}
    rule_path = modeling_mixedae.homologous_attention_path("sdpa", device)
    for path in modeling_mixedae.HOMOLOGOUS_ATTENTION_PATHS:
        model = bench_pretrain.build_mixedae(size, "sdpa")
        model.vit.homologous_attention_path = path
        models[f"mixedae (sdpa, {path}{', the rule on CPU' if path == rule_path else ''})"] = model
    image_size = bench_pretrain.SIZES[size]["encoder"].image_size
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    steps = {}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
        inputs = bench_pretrain.model_inputs(model, pixel_values)
        steps[name] = (
            lambda model=model, optimizer=optimizer, inputs=inputs: bench_pretrain.training_step(
                model, optimizer, inputs, device, precision
            )
        )
    medians = interleaved_medians(steps, repeats, warmup=1)
    return report(f"Training step, {size}, batch {batch_size}, {precision}, CPU", medians, "vitmae (sdpa)", "step")


SECTIONS = ("homologous", "paths", "unmix", "small", "optimizer", "step")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=list(bench_pretrain.SIZES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="wall time, or the process's CPU time (shared CPUs)"
    )
    parser.add_argument(
        "--sections", default="homologous,unmix,small,optimizer", help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--json", default=None, help="write every row, the machine and the load average here")
    args = parser.parse_args(argv)
    if args.batch_size < 4 or args.batch_size % 4:
        parser.error(
            f"--batch-size {args.batch_size}: MixedAE mixes groups of 4 images (r = 0.25), give a multiple of 4"
        )
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections {args.sections!r}: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    load_before = os.getloadavg()
    CLOCK["clock"] = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    full = bench_pretrain._mixedae_config(args.size, "eager", mixing_ratio=0.25, mask_ratio=0.0)
    mae_mode = bench_pretrain._mixedae_config(args.size, "eager", mixing_ratio=1.0, mask_ratio=0.75)
    print(f"# microbench_mixedae: size {args.size}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved runs, {args.clock} clock")
    rows = []
    if "homologous" in sections:
        rows += bench_homologous_attention(full, args.batch_size, args.repeats, dtype)
    if "paths" in sections:
        rows += bench_homologous_paths(full, args.batch_size, args.repeats, dtype)
    if "unmix" in sections:
        rows += bench_unmix(full, args.batch_size, args.repeats, "MixedAE r=0.25")
        rows += bench_unmix(mae_mode, args.batch_size, args.repeats, "MAE mode")
    if "small" in sections:
        rows += bench_small_parts(full, args.batch_size, args.repeats)
    if "optimizer" in sections:
        rows += bench_optimizer(args.size, max(5, args.repeats // 3))
    if "step" in sections:
        rows += bench_step(args.size, args.batch_size, args.repeats, args.precision)
    if args.json:
        record = dict(
            command=" ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
            machine=bench_pretrain.machine_description(torch.device("cpu")),
            clock=args.clock,
            repeats=args.repeats,
            load_average_1_5_15_before=load_before,
            load_average_1_5_15_after=os.getloadavg(),
            rows=rows,
        )
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
