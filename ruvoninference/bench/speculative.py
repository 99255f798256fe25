"""Speculative decoding measured: the same prompts with and without it, side by side in one run.

Two kinds of text, because speculation pays only when the guesses are right:

- **copying**: answers that repeat the prompt (a passage continued or said again, a code snippet edited),
  where the n-gram proposer finds the next tokens in the prompt;
- **free**: open-ended answers, where it rarely finds anything.

Each cell runs the same prompts through one engine per setting (no speculation, n-gram, optionally a draft
model), greedy, EOS ignored so every setting produces the same number of tokens, the settings interleaved
repeat by repeat after a warm-up. A cell reports median tokens/s, the ratio to no speculation, the share of
guesses accepted and the tokens a speculating sequence gained per step; and it checks that every setting
produced exactly the same tokens (a speed-up that changed the output would be no speed-up).

At batch 1 the prompts run one at a time; at batch B the prompts are repeated to B requests that run
together, where the engine turns speculation off above its threshold (`MAX_SPECULATIVE_BATCH`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ruvoninference.engine import Engine, SamplingParams

PASSAGE = (
    "The lighthouse stood at the end of a narrow spit of rock, and for forty years the same keeper had climbed "
    "its one hundred and twelve steps every evening to light the lamp. He kept a logbook in which he wrote the "
    "weather, the ships that passed and the birds that rested on the gallery rail. When the lamp was finally "
    "replaced by an automatic beacon, he carried the logbook down the steps for the last time and gave it to "
    "the village school, where the children still read it aloud on stormy afternoons."
)
CODE = '''def moving_average(values, window):
    """Return the averages of each run of `window` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    averages = []
    total = sum(values[:window])
    averages.append(total / window)
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        averages.append(total / window)
    return averages
'''
RECIPE = (
    "Ingredients: 200 g flour, 100 g butter, 50 g sugar, 1 egg, a pinch of salt. Method: rub the butter into "
    "the flour and salt until it looks like breadcrumbs, stir in the sugar, then add the beaten egg and bring "
    "the dough together. Chill it for thirty minutes, roll it out to the thickness of a coin, cut into rounds "
    "and bake at 180 degrees for twelve minutes, until the edges are golden."
)

# Prompts in the embedded model's chat format are not needed: these are continuations a base or an instruct
# model tends to copy, because the text it should produce is right there.
COPYING = [
    f"{PASSAGE}\n\nCopy the passage above exactly, word for word:\n\n",
    f"Here is a Python function:\n\n```python\n{CODE}```\n\nHere is the same function with the parameter "
    f"`window` renamed to `size`:\n\n```python\n",
    f"{RECIPE}\n\nThe same recipe again, with the quantities doubled:\n\nIngredients:",
    f"```python\n{CODE}```\n\nThe function above, with a docstring that also explains the error:\n\n```python\n",
]
FREE = [
    "Write a short story about a fox who learns to sail.",
    "Explain why the sky is blue to a ten-year-old.",
    "List some ideas for a rainy weekend with friends.",
    "Describe the city of the future in a few sentences.",
]
WORKLOADS = {"copying": COPYING, "free": FREE}


def _run(engine: Engine, prompts: list[str], batch: int, max_tokens: int) -> dict:
    """Generate once; batch 1 runs the prompts one at a time, batch B repeats them to B requests at once."""
    sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    spec = engine.speculator
    before = spec.stats.as_dict() if spec is not None else None
    steps = engine.num_steps
    start = time.perf_counter()
    if batch == 1:
        outputs = [engine.generate([p], sampling)[0] for p in prompts]
    else:
        outputs = engine.generate([prompts[i % len(prompts)] for i in range(batch)], sampling)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for o in outputs)
    run = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "steps": engine.num_steps - steps,
           "token_ids": [o.token_ids for o in outputs]}
    if spec is not None:
        after = spec.stats.as_dict()
        d = {k: after[k] - before[k] for k in ("num_drafts", "num_draft_tokens", "num_accepted_tokens",
                                              "num_emitted_tokens")}
        run["acceptance_rate"] = d["num_accepted_tokens"] / d["num_draft_tokens"] if d["num_draft_tokens"] else None
        run["mean_tokens_per_step"] = d["num_emitted_tokens"] / d["num_drafts"] if d["num_drafts"] else None
        run["spec_counts"] = d
    return run


def benchmark_speculative(
    make_engine: Callable[[dict], Engine],
    settings: dict[str, dict],
    workloads: list[str],
    batch_sizes: list[int],
    max_tokens: int,
    repeats: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Every (workload, batch) cell, every setting in it, interleaved repeat by repeat after one warm-up.

    `settings` maps a name to Engine keyword arguments ({} is no speculation, and must be first);
    `make_engine(kwargs)` builds an engine with them.
    """
    engines = {name: make_engine(kwargs) for name, kwargs in settings.items()}
    baseline = next(iter(settings))
    cells = []
    total = len(workloads) * len(batch_sizes) * (repeats + 1) * len(settings)
    done = 0
    for workload in workloads:
        prompts = WORKLOADS[workload]
        for batch in batch_sizes:
            runs: dict[str, list[dict]] = {name: [] for name in settings}
            for r in range(repeats + 1):  # r == 0 is the warm-up
                order = list(settings) if r % 2 else list(reversed(settings))
                for name in order:
                    if progress:
                        progress(f"{workload}, batch {batch}, {name}", done, total)
                    run = _run(engines[name], prompts, batch, max_tokens)
                    if r:
                        runs[name].append(run)
                    done += 1
            want = runs[baseline][0]["token_ids"]
            cell = {"workload": workload, "batch_size": batch, "settings": {}}
            base_tps = statistics.median(x["tokens_per_s"] for x in runs[baseline])
            for name, rs in runs.items():
                tps = statistics.median(x["tokens_per_s"] for x in rs)
                row = {"tokens_per_s": tps, "speedup": tps / base_tps,
                       "tokens_per_s_runs": [x["tokens_per_s"] for x in rs],
                       "tokens": rs[0]["tokens"], "steps": rs[0]["steps"],
                       "same_tokens": all(x["token_ids"] == want for x in rs)}
                if "acceptance_rate" in rs[0]:
                    row["acceptance_rate"] = rs[0]["acceptance_rate"]
                    row["mean_tokens_per_step"] = rs[0]["mean_tokens_per_step"]
                    row["spec_counts"] = rs[0]["spec_counts"]
                cell["settings"][name] = row
            cells.append(cell)
    return {"cells": cells, "settings": settings, "max_tokens": max_tokens, "repeats": repeats,
            "workloads": {w: WORKLOADS[w] for w in workloads}}


def to_markdown(report: dict) -> str:
    names = list(report["settings"])
    head = "| text | batch | " + " | ".join(f"{n} tok/s" for n in names) + " | " + " | ".join(
        f"{n} speed-up, accepted, tokens/step" for n in names[1:]) + " | same tokens |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for cell in report["cells"]:
        s = cell["settings"]
        parts = [cell["workload"], str(cell["batch_size"])] + [f"{s[n]['tokens_per_s']:.1f}" for n in names]
        for n in names[1:]:
            acc, tps = s[n].get("acceptance_rate"), s[n].get("mean_tokens_per_step")
            parts.append(f"{s[n]['speedup']:.2f}x, " + (f"{acc:.0%}, {tps:.2f}" if acc is not None else "off"))
        parts.append("yes" if all(s[n]["same_tokens"] for n in names) else "**NO**")
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"
