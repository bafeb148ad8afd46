#!/usr/bin/env python
# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""One picture of a few `experiments/ablate.py` records (`ablate_result.json`, or their copies in docs/ablations/),
for runs that are not one grid: the homologous top-k accuracy over the run (all and foreground queries) of every
record that has a curve, and its kNN, linear-probe and, where the record holds one, UperNet mIoU.

    python experiments/plot_records.py --output docs/ablations/main_grid/forty_epochs.png \
        docs/ablations/main_grid/*_3720_steps_seed_*.json

Each record is one run, labelled with its arm, seed and length in steps; no spread is drawn.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Record key -> label of the bar chart; values are fractions, drawn as percentages.
SCORES = {"eval_knn_accuracy": "kNN top-1", "eval_linear_probe_accuracy": "linear probe top-1",
          "eval_mean_iou": "UperNet mIoU"}


def load_records(paths: list[Path]) -> list[dict]:
    records = [json.loads(Path(path).read_text()) for path in paths]
    for path, record in zip(paths, records):
        if "arm" not in record or "steps" not in record:
            raise ValueError(f"{path} is not an ablate.py record (no 'arm' / 'steps')")
    return records


def plot_records(records: list[dict], output: Path, title: str) -> None:
    figure, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4.8))
    for record in records:
        curve = record.get("topk_curve") or []
        if not curve:
            continue
        steps = [point["step"] for point in curve]
        line, = curves.plot(steps, [point["homologous_topk_accuracy"] for point in curve],
                            label=f"{record['arm']} seed {record.get('seed', 0)} ({record['steps']} steps)")
        curves.plot(steps, [point["homologous_topk_accuracy_foreground"] for point in curve], linestyle="--",
                    color=line.get_color())
    curves.axhline(0.25, color="grey", linewidth=0.8, linestyle=":")
    curves.set(xlabel="optimizer step", ylabel="homologous top-k accuracy",
               title="top-k accuracy (solid: all queries, dashed: foreground; dotted: chance)")
    curves.legend(fontsize=7)

    scores = [key for key in SCORES if any(record.get(key) is not None for record in records)]
    width = 0.8 / len(records)
    measured = [100 * record[key] for record in records for key in scores if record.get(key) is not None]
    bars.set_ylim(max(0.0, min(measured) - 10), max(measured) + 5)  # the differences, not the distance from 0
    for index, record in enumerate(records):
        # A run without a score gets neither bar nor label (NaN), never a bar of height 0 labelled "0.0".
        values = [100 * record[key] if record.get(key) is not None else math.nan for key in scores]
        positions = [position + index * width for position in range(len(scores))]
        drawn = bars.bar(positions, values, width, label=f"{record['arm']} seed {record.get('seed', 0)}")
        bars.bar_label(drawn, fmt="%.1f", fontsize=6)
    bars.set_xticks([position + width * (len(records) - 1) / 2 for position in range(len(scores))],
                    [SCORES[key] for key in scores])
    bars.set(ylabel="%", title="frozen features and dense transfer (one bar per run)")
    bars.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", type=Path, help="ablate.py records (JSON)")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="ablate.py records", help="the figure's title")
    args = parser.parse_args(argv)
    plot_records(load_records(args.records), args.output, args.title)


if __name__ == "__main__":
    main()
