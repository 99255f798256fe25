"""The articles' pictures and worked example, made from committed results by a command.

    python -m ruvon_cli.report all [--from CLONE]   # every picture in articles/img/ from docs/benchmarks/
    python -m ruvon_cli.report memory FLASH.json [--kernel KERNEL.json] --out memory.png
    python -m ruvon_cli.report kernel KERNEL.json --out kernel.png
    python -m ruvon_cli.report tiles --out tiles.png
    python -m ruvon_cli.report online-softmax       # the worked example of Part 9, as a markdown table

Nothing here measures: the plots read the JSON that `flash --json` and `kernel benchmark --json` wrote, and
the tile diagram draws the block plan of `ruvoninference/kernels/flash_attention.py` (Block 3) for a shape.
Byte counts on the tile diagram are arithmetic on the shapes, labelled as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from ruvon_cli.common import friendly, load_saved

ROOT = Path(__file__).resolve().parents[1]
FUSED_STYLE = {"sdpa": "tab:green", "flash_attention_2": "tab:orange", "triton": "tab:blue",
               "sdpa_flash": "tab:olive", "sdpa_cudnn": "tab:green", "sdpa_efficient": "tab:gray",
               "flash_attn": "tab:orange"}
EAGER = {"eager", "standard"}
# Fused kernels often need the same memory to the MiB, so their lines coincide: each gets its own marker (hollow
# where it can hold another inside) so that every provider stays visible on top of the others.
MARKER = {"sdpa": ("o", 9), "sdpa_cudnn": ("o", 9), "flash_attention_2": ("^", 6), "flash_attn": ("^", 6),
          "triton": ("x", 6), "sdpa_flash": ("D", 5), "sdpa_efficient": ("v", 6)}

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Figures and worked examples for the articles, from committed JSON.")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _is_eager(name: str) -> bool:
    return name.split()[0] in EAGER


def _color(name: str) -> str:
    if _is_eager(name):
        return "darkred" if "causal" in name else "tab:red"
    return FUSED_STYLE.get(name, "tab:purple")


def _mark_oom(ax, xs: list[int], color: str, slot: int = 0) -> None:
    """OOM points on an axis where height means nothing for them (TFLOP/s): labelled crosses near the top of
    the axes (a gap alone reads as missing data); `slot` stacks several providers' marks at the same n."""
    y = 0.95 - 0.09 * slot
    for x in xs:
        ax.plot([x], [y], marker="X", markersize=10, color=color, transform=ax.get_xaxis_transform(),
                linestyle="none")
        ax.annotate("OOM", (x, y), xycoords=("data", "axes fraction"), xytext=(-8, 0),
                    textcoords="offset points", ha="right", va="center", color=color, fontsize=8, weight="bold")


def extrapolated_need(ok: list[tuple[int, float]], x: int) -> float | None:
    """What a run that ran out of memory would have needed: the last two measured points' power law
    (memory ∝ n^k on log-log axes) carried on to n = x. An estimate, drawn and labelled as one."""
    if len(ok) < 2:
        return None
    (x0, y0), (x1, y1) = sorted(ok)[-2:]
    k = math.log(y1 / y0) / math.log(x1 / x0)
    return y1 * (x / x1) ** k


def _mark_oom_at_need(ax, ok: list[tuple[int, float]], xs: list[int], color: str, below: bool = False) -> None:
    """OOM on a memory axis: a hollow cross at the memory the call would have needed (extrapolated from its
    measured points, dotted from the last one), so its height says by how much it did not fit. `below` puts the
    label under the cross instead of over it, for a second provider whose crosses land near the first's."""
    for x in xs:
        need = extrapolated_need(ok, x)
        if need is None:
            _mark_oom(ax, [x], color)
            continue
        last = max(ok)
        ax.plot([last[0], x], [last[1], need], linestyle=":", color=color, linewidth=1.2)
        ax.plot([x], [need], marker="X", markersize=10, color=color, markerfacecolor="white", linestyle="none")
        ax.annotate(f"OOM: needs ~{need / 1024:,.0f} GiB (est.)", (x, need), xytext=(-4, -9 if below else 8),
                    textcoords="offset points", ha="right", va="top" if below else "bottom", color=color,
                    fontsize=7.5, weight="bold")


def _coincide_note(ax, points: dict[str, list[tuple[int, float | None, str]]]) -> None:
    """Say in the panel which lines lie on top of each other (within 5% at every common n), since one line
    can hide another however the markers differ."""
    curves = {name: {x: y for x, y, status in pts if status == "ok" and y} for name, pts in points.items()}
    groups: list[list[str]] = []
    for name in curves:
        for group in groups:
            ref = curves[group[0]]
            common = set(ref) & set(curves[name])
            if common and all(abs(curves[name][x] / ref[x] - 1) <= 0.05 for x in common):
                group.append(name)
                break
        else:
            groups.append([name])
    lines = [f"{', '.join(g)}: within 5% of each other, lines overlap" for g in groups if len(g) > 1]
    if lines:
        ax.text(0.98, 0.03, "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5,
                color="#444444", bbox={"facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.9})


def _series(ax, points: dict[str, list[tuple[int, float | None, str]]], ylabel: str) -> None:
    """One line per provider on log-log axes; (x, None, 'OOM') entries become crosses at the memory they would
    have needed (extrapolated). A causal eager line is drawn wide and pale underneath, the non-causal one thin on
    top, since the two need nearly the same memory."""
    for name, pts in points.items():
        ok = [(x, y) for x, y, status in pts if status == "ok" and y]
        eager = _is_eager(name)
        if ok and eager and "causal" in name:
            ax.plot(*zip(*ok), "-", marker="s", color=_color(name), label=name, linewidth=6, markersize=9,
                    alpha=0.45, zorder=2)
        elif ok and eager:
            ax.plot(*zip(*ok), "-", marker="o", color=_color(name), label=name, linewidth=1.8, markersize=4,
                    zorder=4)
        elif ok:
            marker, size = MARKER.get(name, ("o", 5))
            hollow = marker in ("o", "^", "D", "v")
            ax.plot(*zip(*ok), "--", marker=marker, color=_color(name), label=name, linewidth=1.3,
                    markersize=size, markerfacecolor="none" if hollow else _color(name), markeredgewidth=1.5,
                    zorder=3)
        oom = [x for x, _, status in pts if status == "OOM"]
        if oom:
            _mark_oom_at_need(ax, ok, oom, _color(name), below="causal" in name)
    _coincide_note(ax, points)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens n")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")


def memory_figure(flash: dict, kernel: dict | None, out: Path) -> Path:
    """Peak memory against context: the whole model's prefill (flash.json) and one attention call (kernel.json)."""
    plt = _pyplot()
    panels = 2 if kernel else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.6 * panels, 5.0), squeeze=False, layout="constrained")
    scaling = flash["memory_scaling"]
    points: dict[str, list] = {}
    for r in scaling["rows"]:
        mib = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
        points.setdefault(r["implementation"], []).append((r["sequence_length"], mib, r["status"]))
    ax = axes[0][0]
    _series(ax, points, "peak memory above the weights (MiB, log)")
    cfg = flash["config"]
    ax.set_title(f"{cfg['model']} prefill, {cfg['dtype']}, batch 1", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(top=ax.get_ylim()[1] * 3)  # headroom, so no line runs under the legend
    if kernel:
        d = min(kernel["config"]["head_dims"])
        points = {}
        for m in kernel["memory"]:
            if m["head_dim"] == d and m["provider"] in ("standard", "sdpa_cudnn", "flash_attn", "triton"):
                mib = None if m["peak_extra_bytes"] is None else m["peak_extra_bytes"] / 2**20
                name = m["provider"] + (" causal" if m["causal"] else "")
                if m["causal"] and m["provider"] != "standard":
                    continue  # the fused kernels' memory does not depend on the mask: one line each
                points.setdefault(name, []).append((m["seq_len"], mib, m["status"]))
        ax = axes[0][1]
        _series(ax, points, "peak extra memory of one call (MiB, log)")
        heads = kernel["config"]["hidden"] // d
        ax.set_title(f"one attention call, {heads} heads × d={d}, {kernel['config']['dtype']}, batch 1", fontsize=10)
        ax.set_ylim(top=ax.get_ylim()[1] * 30)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Memory against context length: eager (solid) vs fused (dashed)\n{flash['environment']['device']}",
                 fontsize=11)
    return _save(fig, out)


def kernel_figure(kernel: dict, out: Path) -> Path:
    """TFLOP/s against n, one panel per (head_dim, causal); the legend sits below the panels, over no line."""
    plt = _pyplot()
    combos = sorted({(r["head_dim"], r["causal"]) for r in kernel["rows"]})
    cols = 2
    rows = math.ceil(len(combos) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.6 * rows + 0.8), squeeze=False, sharex=True)
    providers = kernel["config"]["providers"]
    for ax, (d, causal) in zip(axes.flat, combos):
        for p in providers:
            pts = [(r["seq_len"], r["tflops"], r["status"]) for r in kernel["rows"]
                   if r["provider"] == p and r["head_dim"] == d and r["causal"] == causal]
            ok = [(x, y) for x, y, s in pts if s == "ok" and y]
            if ok:
                ax.plot(*zip(*ok), marker="o", color=_color(p), label=p, linewidth=2.2 if p == "triton" else 1.3)
            if any(s == "OOM" for _, _, s in pts):
                _mark_oom(ax, [x for x, _, s in pts if s == "OOM"], _color(p))
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, max(r["tflops"] or 0 for r in kernel["rows"] if r["head_dim"] == d) * 1.22)  # OOM marks above
        ax.set_title(f"head_dim {d}, {'causal' if causal else 'not causal'}", fontsize=10, pad=16)
        ax.set_ylabel("TFLOP/s")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("sequence length n")
    for ax in list(axes.flat)[len(combos):]:
        ax.set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"Attention forward, {kernel['config']['dtype']}, {kernel['environment']['device']}", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, out)


@dataclass(frozen=True)
class BlockPlan:
    """For each query tile, the key blocks it reads without a mask, with a mask, and never."""

    n_q: int
    n_kv: int
    block_m: int
    block_n: int

    def tile(self, start_m: int) -> tuple[int, int]:
        """(unmasked_end, end) in keys for query tile `start_m`: the same arithmetic as the kernel's Block 3."""
        diagonal = self.n_kv - self.n_q  # bottom-right alignment: row i sees keys j <= i + diagonal
        full_blocks_end = (self.n_kv // self.block_n) * self.block_n
        first_row_sees = max(start_m * self.block_m + diagonal + 1, 0)
        unmasked_end = min((first_row_sees // self.block_n) * self.block_n, full_blocks_end)
        end = min(max(start_m * self.block_m + self.block_m + diagonal, 0), self.n_kv)
        return unmasked_end, end

    def grid(self) -> list[list[str]]:
        """'full', 'masked' or 'skipped' for every (query tile, key block)."""
        out = []
        for i in range(math.ceil(self.n_q / self.block_m)):
            unmasked_end, end = self.tile(i)
            row = []
            for j in range(math.ceil(self.n_kv / self.block_n)):
                lo = j * self.block_n
                row.append("full" if lo + self.block_n <= unmasked_end else "masked" if lo < end else "skipped")
            out.append(row)
        return out


def traffic_bytes(n: int, d: int, heads: int, block_m: int, causal: bool, elem: int = 2) -> dict[str, dict[str, float]]:
    """Device-memory bytes of one attention forward, by tensor: arithmetic on the shapes, not a measurement.

    Eager: Q, K, V read and O written once; S written then read by the softmax, P written then read by PV
    (the scale, mask and fp32 upcasts of real implementations add more). Fused: Q read and O written once,
    K and V read once per query tile that visits them (about half the tiles' worth when causal); S and P
    never leave the chip.
    """
    qkvo = heads * n * d * elem
    scores = heads * n * n * elem
    tiles = math.ceil(n / block_m)
    kv_passes = (tiles + 1) / 2 if causal else tiles
    return {
        "eager": {"Q, K, V, O": 4 * qkvo, "S written + read": 2 * scores, "P written + read": 2 * scores},
        "fused": {"Q read, O written": 2 * qkvo, "K, V streamed per query tile": 2 * qkvo * kv_passes},
    }


def tiles_figure(out: Path, n: int = 1024, block_m: int = 128, block_n: int = 64, d: int = 64, heads: int = 32,
                 traffic_n: int = 16384) -> Path:
    plt = _pyplot()
    from matplotlib.patches import Patch, Rectangle

    plan = BlockPlan(n, n, block_m, block_n)
    grid = plan.grid()
    colors = {"full": "#4c72b0", "masked": "#dd8452", "skipped": "#eeeeee"}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1.1, 1]})
    for i, row in enumerate(grid):
        for j, kind in enumerate(row):
            ax.add_patch(Rectangle((j * block_n, i * block_m), block_n, block_m, facecolor=colors[kind],
                                   edgecolor="white", linewidth=1.5))
    ax.plot([0, n], [0, n], color="black", linewidth=1, linestyle=":")
    ax.set_xlim(0, n)
    ax.set_ylim(n, 0)
    ax.set_aspect("equal")
    ax.set_xlabel(f"keys (blocks of BLOCK_N = {block_n})")
    ax.set_ylabel(f"queries (one program per BLOCK_M = {block_m} rows)")
    counts = {k: sum(r.count(k) for r in grid) for k in colors}
    ax.set_title(f"Causal block plan, n = {n}: {counts['full']} blocks unmasked, {counts['masked']} masked, "
                 f"{counts['skipped']} never loaded", fontsize=9.5)
    ax.legend(handles=[Patch(color=colors["full"], label="read, no mask code"),
                       Patch(color=colors["masked"], label="read, masked (straddles the diagonal)"),
                       Patch(facecolor=colors["skipped"], edgecolor="#999999", label="skipped: never loaded")],
              loc="upper right", fontsize=8, framealpha=0.95)

    traffic = traffic_bytes(traffic_n, d, heads, block_m, causal=True)
    gib = 2**30
    shades = {"eager": ["#8c8c8c", "#c44e52", "#e8a0a2"], "fused": ["#8c8c8c", "#4c72b0"]}
    for y, (impl, parts) in enumerate(traffic.items()):
        left = 0.0
        for k, (label, value) in enumerate(parts.items()):
            bx.barh(y, value / gib, left=left, color=shades[impl][k], edgecolor="white",
                    label=f"{impl}: {label} ({value / gib:,.1f} GiB)")
            left += value / gib
        bx.text(left + 1, y, f"{left:,.1f} GiB", va="center", fontsize=9, weight="bold")
    bx.set_yticks([0, 1], ["eager:\nS and P go to\ndevice memory\nand back", "fused:\nS and P tiles\nstay on chip"])
    bx.invert_yaxis()
    bx.set_xlabel("device-memory traffic of one forward (GiB)")
    bx.set_xlim(0, max(sum(p.values()) for p in traffic.values()) / gib * 1.3)
    bx.legend(fontsize=7.5, loc="lower right")
    bx.set_title(f"Device-memory bytes, n = {traffic_n:,}, {heads} heads × d={d}, bf16, causal\n"
                 "(arithmetic on the shapes, not a measurement)", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def online_softmax_steps(scores: list[list[float]], values: list[list[float]]) -> tuple[list[dict], float, float]:
    """One query row's online softmax over blocks of (score, value): every intermediate, then both answers.

    Returns (steps, online result, direct softmax(s)·v). Natural exp here; the kernel uses exp2 with log2(e)
    folded into the scale, which gives the same numbers.
    """
    m, l, acc, steps = -math.inf, 0.0, 0.0, []
    for block_s, block_v in zip(scores, values):
        m_new = max(m, *block_s)
        alpha = math.exp(m - m_new)  # exp(-inf) = 0 on the first block: nothing to rescale yet
        p = [math.exp(s - m_new) for s in block_s]
        l = l * alpha + sum(p)
        acc = acc * alpha + sum(pi * vi for pi, vi in zip(p, block_v))
        steps.append({"scores": block_s, "values": block_v, "m_old": m, "m_new": m_new, "alpha": alpha,
                      "p": p, "l": l, "acc": acc})
        m = m_new
    flat_s = [s for b in scores for s in b]
    flat_v = [v for b in values for v in b]
    top = max(flat_s)
    weights = [math.exp(s - top) for s in flat_s]
    direct = sum(w * v for w, v in zip(weights, flat_v)) / sum(weights)
    return steps, acc / l, direct


EXAMPLE_SCORES = [[1.0, 2.0], [4.0, 0.5], [3.0, 1.0]]  # the second block raises the max, the third does not
EXAMPLE_VALUES = [[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]


def online_softmax_markdown(scores=EXAMPLE_SCORES, values=EXAMPLE_VALUES) -> str:
    steps, online, direct = online_softmax_steps(scores, values)

    def f(x: float) -> str:
        return "−∞" if x == -math.inf else f"{x:.4f}"

    lines = ["| block | scores s | values v | m before → after | α = exp(m_before − m_after) | p = exp(s − m_after) "
             "| l = l·α + Σp | acc = acc·α + Σ p·v |", "|---|---|---|---|---|---|---|---|"]
    for i, st in enumerate(steps, 1):
        lines.append(
            f"| {i} | {', '.join(f'{s:g}' for s in st['scores'])} | {', '.join(f'{v:g}' for v in st['values'])} "
            f"| {'−∞' if st['m_old'] == -math.inf else format(st['m_old'], 'g')} → {st['m_new']:g} | {f(st['alpha'])} | {', '.join(f(p) for p in st['p'])} "
            f"| {f(st['l'])} | {f(st['acc'])} |")
    lines += ["", f"Online: acc / l = {steps[-1]['acc']:.4f} / {steps[-1]['l']:.4f} = {online:.6f}. "
              f"Direct softmax(s) · v over all six keys: {direct:.6f}."]
    return "\n".join(lines) + "\n"


def _save(fig, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def _load(path: Path, command: str, option: str = "") -> dict:
    return load_saved(path, dict, command, option)[1]


@app.command("memory")
@friendly
def memory_cmd(flash_json: Path, out: Annotated[Path, typer.Option("--out")],
               kernel_json: Annotated[Optional[Path], typer.Option("--kernel")] = None) -> None:
    """Peak memory against context, eager vs fused, log scale, OOM marked."""
    kernel = _load(kernel_json, "kernel benchmark", "--kernel") if kernel_json else None
    print(memory_figure(_load(flash_json, "flash"), kernel, out))


@app.command("kernel")
@friendly
def kernel_cmd(kernel_json: Path, out: Annotated[Path, typer.Option("--out")]) -> None:
    """TFLOP/s against n per (head_dim, causal), legend outside the panels."""
    print(kernel_figure(_load(kernel_json, "kernel benchmark"), out))


@app.command("tiles")
def tiles_cmd(out: Annotated[Path, typer.Option("--out")], n: int = 1024, block_m: int = 128,
              block_n: int = 64) -> None:
    """The causal tile grid and the device-memory traffic it avoids."""
    print(tiles_figure(out, n, block_m, block_n))


@app.command("online-softmax")
def online_softmax_cmd() -> None:
    """The worked example: three blocks, the running max and sum, the rescale."""
    print(online_softmax_markdown(), end="")


@app.command("all")
@friendly
def all_cmd(
    clone: Annotated[Path, typer.Option("--from", help="A clone of the repository (default: the one this runs "
                                                       "from).")] = ROOT,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Default: articles/img of that clone.")] = None,
) -> None:
    """Every article picture from the committed results in docs/benchmarks/ of a clone."""
    from ruvoninference.errors import RuvonError

    bench = clone / "docs" / "benchmarks"
    if not bench.is_dir():
        raise RuvonError(f"`report all` reads the committed results in docs/benchmarks/ of a clone of the "
                         f"repository, and {clone} has none; run it in a clone or pass --from CLONE.")
    out_dir = out_dir or clone / "articles" / "img"
    kernel = _load(bench / "h200-kernel" / "kernel.json", "kernel benchmark")
    print(memory_figure(_load(bench / "h200-engine" / "flash.json", "flash"), kernel,
                        out_dir / "memory-vs-context-h200.png"))
    print(memory_figure(_load(bench / "cpu" / "flash.json", "flash"), None, out_dir / "memory-vs-context-cpu.png"))
    print(kernel_figure(kernel, out_dir / "kernel-tflops-h200.png"))
    print(tiles_figure(out_dir / "causal-tiles.png"))


if __name__ == "__main__":
    app()
