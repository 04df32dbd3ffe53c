"""Format an Evaluation: rich tables for the terminal, PNG plots, metrics.json and a
self-contained report.html."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

import numpy as np
from rich.table import Table

from herd import metrics
from herd.evaluation import BenchmarkResult, Evaluation, MethodResult
from herd.offpolicy import MIN_ESS, Estimate, OffPolicyResult
from herd.select import CAPTION, Selection
from herd.workers import run_tasks

MAX_SINGLES = 10  # a large pool shows its top models plus the cheapest
SUMMARY_KINDS = ("oracle", "random", "best-single", "best-on-test", "task-best", "vote", "router", "random-control")


# ---- cells ------------------------------------------------------------------------------
# Below this share of queries with a known cost, a mean cost says little: shown as n/a, not plotted.
MIN_COST_COVERAGE = 0.9


def fmt_cost(r: MethodResult) -> str:
    if r.cost_usd is None:
        return "n/a"
    if r.cost_coverage < MIN_COST_COVERAGE:
        return f"n/a ({r.cost_coverage:.0%} priced)"
    text = f"{'~' if r.cost_estimated else ''}${r.cost_usd:.3g}"
    return text + ("*" if r.cost_coverage < 0.999 else "")


def fmt_usd(x: float | None) -> str:
    return "n/a" if x is None else f"${x:.3g}"


def fmt_pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def fmt_gap(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.1f}%"


def fmt_latency(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def shown_rows(b: BenchmarkResult) -> tuple[list[MethodResult], str | None]:
    """Summary rows, then single models (top MAX_SINGLES + the cheapest when the pool is large)."""
    summary = [r for kind in SUMMARY_KINDS for r in b.rows if r.kind == kind]
    singles = sorted((r for r in b.rows if r.kind == "single"), key=lambda r: -r.accuracy)
    if len(singles) <= MAX_SINGLES + 2:
        return summary + singles, None
    top = singles[:MAX_SINGLES]
    priced = [r for r in singles if r.cost_usd is not None]
    cheapest = min(priced, key=lambda r: r.cost_usd) if priced else None
    if cheapest is not None and cheapest not in top:
        top.append(cheapest)
    note = (f"showing {len(top)} of {len(singles)} single models (top {MAX_SINGLES} by accuracy"
            f"{' + the cheapest' if cheapest is not None else ''}); metrics.json has all of them")
    return summary + top, note


def footnotes(b: BenchmarkResult) -> list[str]:
    notes = []
    rows = b.rows
    if any(r.cost_estimated for r in rows):
        notes.append("~ cost estimated from list prices (or the price-by-size schedule) x tokens (chars/4)")
    if any(MIN_COST_COVERAGE <= r.cost_coverage < 0.999 and r.cost_usd is not None for r in rows):
        notes.append("* some chosen models have no price: cost is the mean over queries whose model has one")
    if any(r.cost_coverage < MIN_COST_COVERAGE and r.cost_usd is not None for r in rows):
        notes.append(f"n/a (x% priced): fewer than {MIN_COST_COVERAGE:.0%} of the chosen models' answers have a "
                     "price, too few for a mean cost; such methods are left off the cost plot")
    if b.unpriced_models:
        notes.append(f"no price or size, left out of cost figures: {', '.join(b.unpriced_models)}")
    if all(r.latency_s is None for r in rows):
        notes.append("latency: the data records none")
    notes.extend(b.notes)
    return notes


def _protocol(ev: Evaluation) -> str:
    if ev.folds == 0:
        return "a trained router on held-out data"
    return f"{ev.folds}-fold CV by query (seed {ev.seed})"


def _title(b: BenchmarkResult, ev: Evaluation) -> str:
    return f"{b.source} / {b.benchmark}: {b.n_queries} queries, {len(b.models)} models, {_protocol(ev)}"


def _router_rows(b: BenchmarkResult, field: str) -> dict[str, MethodResult]:
    """The first row of each router (under any policy) whose ``field`` is set: per-router
    figures such as AIQ and APGR do not depend on the policy."""
    out: dict[str, MethodResult] = {}
    for r in b.rows:
        if r.kind == "router" and getattr(r, field) is not None:
            out.setdefault(r.method.split(" ")[0], r)
    return out


def curve_summary(b: BenchmarkResult) -> str | None:
    if b.single_aiq is None:
        return None
    parts = [f"single models {b.single_aiq:.4f}"]
    for name, r in _router_rows(b, "aiq").items():
        match = ("never matches best single" if r.cost_to_match_best_single is None
                 else f"matches best single at ${r.cost_to_match_best_single:.3g}/query")
        parts.append(f"{name} {r.aiq:.4f} ({match})")
    lo, hi = b.cost_range
    return f"cost-quality AIQ over ${lo:.3g}-${hi:.3g}/query: " + "; ".join(parts)


def two_model_summary(b: BenchmarkResult) -> str | None:
    """RouteLLM's APGR and CPT for two-model pools."""
    parts = []
    for name, r in _router_rows(b, "apgr").items():
        c50 = "n/a" if r.cpt50 is None else f"{100 * r.cpt50:.1f}%"
        c80 = "n/a" if r.cpt80 is None else f"{100 * r.cpt80:.1f}%"
        parts.append(f"{name} APGR {r.apgr:.3f}, CPT(50%) {c50}, CPT(80%) {c80}")
    if not parts:
        return None
    return f"two-model routing, strong model {b.rows[0].best_single} (a random router has APGR 0.5): " + "; ".join(parts)


def _owned_shown(b: BenchmarkResult) -> bool:
    """Ownership is worth a column only where some models are open and some are not."""
    shares = [r.ownership for r in b.rows if r.kind == "single" and r.ownership is not None]
    return bool(shares) and 0 < sum(shares) < len(shares)


def console_table(b: BenchmarkResult, ev: Evaluation) -> Table:
    rows, note = shown_rows(b)
    owned = _owned_shown(b)
    t = Table(title=_title(b, ev), title_justify="left")
    for col, justify in (("method", "left"), ("kind", "left"), ("accuracy %", "right"),
                         ("cost/query", "right"), ("latency s", "right"), ("gap closed", "right")):
        t.add_column(col, justify=justify)
    if owned:
        t.add_column("owned %", justify="right")
    for r in rows:
        style = "bold" if r.kind in ("router", "best-single") else None
        t.add_row(r.method, r.kind, fmt_pct(r.accuracy), fmt_cost(r), fmt_latency(r.latency_s),
                  fmt_gap(r.gap_closed), *([fmt_pct(r.ownership)] if owned else []), style=style)
    caption = [x for x in [*readings(b), note, curve_summary(b), two_model_summary(b), *cascade_summary(b)]
               + footnotes(b) if x]
    t.caption = "\n".join(caption)
    t.caption_justify = "left"
    return t


def _cost_share(r: MethodResult, best: MethodResult) -> str | None:
    """A method's cost as a share of the best single model's, where both are known for (nearly) every query."""
    ratio = _cost_ratio(r, best)
    return None if ratio is None else f"{ratio:.0%}"


def readings(b: BenchmarkResult) -> list[str]:
    """One line per answer-reading method (agreement cascades, the best vote): its accuracy and
    cost against the best single model, and who answered; for a mixture, what routing buys."""
    try:
        best = b.row("best-single")
    except KeyError:
        return []
    name = best.method.split(": ", 1)[-1]
    lines = [mixture_headline(b, best)] if b.tasks else []
    votes = [r for r in b.rows if r.kind == "vote"]
    shown = [r for r in b.rows if "agree" in r.method] + ([max(votes, key=lambda r: r.accuracy)] if votes else [])
    for r in shown:
        share = _cost_share(r, best)
        cost = f"at {share} of {name}'s cost" if share else f"cost n/a ({r.cost_coverage:.0%} of queries priced)"
        parts = [f"{r.method}: {100 * r.accuracy:.2f}% ({100 * (r.accuracy - best.accuracy):+.2f} pt vs {name}) {cost}"]
        if r.ownership is not None and r.kind != "vote":
            parts.append(f"{r.ownership:.0%} answered by open models")
        if r.accepted is not None:
            parts.append(f"{r.accepted:.0%} kept at the first stage")
        lines.append(", ".join(parts))
    return lines


# Accuracy within this many points of the best single model counts as matching it, and a gain
# must exceed it to count; a saving must leave at most this share of the best single's cost.
SAME_PT = 0.5
SAVES_AT_MOST = 0.9
TRADE_PT = 2.0  # "nothing" still names the cheapest method within this many points


def headline(b: BenchmarkResult) -> str | None:
    """What routing buys on a benchmark, in one line: the largest accuracy gain over the best
    single model (train-chosen) and the cheapest routed method that matches it, or "nothing"."""
    try:
        best = b.row("best-single")
    except KeyError:
        return None
    routed = [r for r in b.rows if r.kind == "router"]
    if not routed:
        return None
    name = best.method.split(": ", 1)[-1]

    def delta(r):
        return f"{100 * (r.accuracy - best.accuracy):+.2f} pt"

    def cost(r):
        share = _cost_share(r, best)
        return f" at {share} of its cost" if share else ""

    parts = []
    top = max(routed, key=lambda r: r.accuracy)
    if top.accuracy > best.accuracy + SAME_PT / 100:
        parts.append(f"{delta(top)} accuracy with {top.method} ({100 * top.accuracy:.2f}%){cost(top)}")
    savers = [r for r in routed if r.accuracy >= best.accuracy - SAME_PT / 100 and _cost_ratio(r, best) is not None
              and _cost_ratio(r, best) <= SAVES_AT_MOST]
    if savers:
        saver = min(savers, key=lambda r: _cost_ratio(r, best))
        if saver is not top or not parts:
            parts.append(f"{1 - _cost_ratio(saver, best):.0%} lower cost with {saver.method} ({delta(saver)})")
    lead = f"vs the best single model {name} ({100 * best.accuracy:.2f}%{'' if best.cost_usd is None else ', ' + fmt_cost(best)})"
    if parts:
        return f"routing buys: {'; '.join(parts)} {lead}"
    trades = [r for r in routed if r.accuracy >= best.accuracy - TRADE_PT / 100 and _cost_ratio(r, best) is not None
              and _cost_ratio(r, best) <= SAVES_AT_MOST]
    closest = (f"the cheapest within {TRADE_PT:g} pt, {min(trades, key=lambda r: _cost_ratio(r, best)).method}, "
               if trades else f"the most accurate, {top.method}, ")
    shown = min(trades, key=lambda r: _cost_ratio(r, best)) if trades else top
    return (f"routing buys nothing here {lead}: no routed method gains over {SAME_PT:g} pt or matches it within "
            f"{SAME_PT:g} pt for less; {closest}{delta(shown)}{cost(shown)}")


def _cost_ratio(r: MethodResult, best: MethodResult) -> float | None:
    if r.cost_usd is None or best.cost_usd is None or min(r.cost_coverage, best.cost_coverage) < MIN_COST_COVERAGE \
            or best.cost_usd <= 0:
        return None
    return r.cost_usd / best.cost_usd


def mixture_headline(b: BenchmarkResult, best: MethodResult) -> str:
    """What routing buys on a mixture: the most accurate routed method against the best single
    model, the best model per task (task known) and its own shuffled control."""
    routed = [r for r in b.rows if r.kind == "router"]
    if not routed:
        return f"mixture of {len(b.tasks)} tasks"
    top = max(routed, key=lambda r: r.accuracy)
    parts = [f"mixture of {len(b.tasks)} tasks: {top.method} {100 * top.accuracy:.2f}% "
             f"({fmt_gap(top.gap_closed)} of the gap) vs best single {100 * best.accuracy:.2f}%"]
    task_best = next((r for r in b.rows if r.kind == "task-best"), None)
    if task_best is not None:
        parts.append(f"best model per task {100 * task_best.accuracy:.2f}% ({fmt_gap(task_best.gap_closed)})")
    control = next((r for r in b.rows if r.kind == "random-control" and r.method == f"{top.method}, shuffled"), None)
    if control is not None:
        parts.append(f"the same models shuffled {100 * control.accuracy:.2f}%")
    share = _cost_share(top, best)
    if share:
        parts.append(f"at {share} of the best single model's cost")
    return "; ".join(parts)


def task_rows(b: BenchmarkResult) -> list[str]:
    """The methods shown per task: best single, best per task, the routed ones."""
    kinds = ("best-single", "task-best", "router")
    return [r.method for kind in kinds for r in b.rows if r.kind == kind and r.method in b.per_task]


def task_table(b: BenchmarkResult) -> Table:
    """Tasks down, methods across (a mixture has more tasks than methods worth showing)."""
    methods = task_rows(b)
    t = Table(title=f"{b.source}/{b.benchmark}: accuracy % per task", title_justify="left")
    t.add_column("task (queries)")
    for method in methods:
        t.add_column(method.replace("best single (train): ", "best single: "), justify="right")
    for task, n in b.tasks.items():
        t.add_row(f"{task} ({n})", *(fmt_pct(b.per_task[method].get(task)) for method in methods))
    return t


def cascade_summary(b: BenchmarkResult) -> list[str]:
    """Per cascade: the most the first model can answer while matching the last model's accuracy;
    per agreement cascade, what each tolerance chose on training answers bought on the test folds."""
    lines = []
    for method, pts in b.cascade_curves.items():
        if "tolerance" in pts[0]:
            steps = "; ".join(f"{100 * p['tolerance']:g} pt: {100 * p['accuracy']:.2f}%, "
                              f"{p['first_model_share']:.0%} kept" + ("" if p["cost_usd"] is None else
                                                                       f", {fmt_usd(p['cost_usd'])}/query")
                              for p in pts)
            lines.append(f"{method} across tolerances (each cascade chosen on training answers): {steps}")
            continue
        last = pts[-1]  # the highest threshold: the last model answers everything
        keep = [p for p in pts if p["accuracy"] >= last["accuracy"] - 1e-12]
        best = min(keep, key=lambda p: p["threshold"])
        owned = "" if best["ownership"] is None else f", {best['ownership']:.0%} owned"
        close = min((p for p in pts if p["accuracy"] >= last["accuracy"] - 0.01), key=lambda p: p["threshold"])
        lines.append(f"{method} swept across thresholds on out-of-fold scores (thresholds read off the test folds, so "
                     f"optimistic; the tuned row is the honest figure): the first model could answer "
                     f"{best['first_model_share']:.0%} of queries at no loss ({100 * best['accuracy']:.2f}% vs the last "
                     f"model alone {100 * last['accuracy']:.2f}%){owned}; {close['first_model_share']:.0%} within 1 point")
    return lines


TOP_SINGLES_IN_BLENDS = 3


def blend_rows(b: BenchmarkResult) -> list[dict]:
    """The blends and the best single model, then the top single models, for tables and plots."""
    rows = b.blends["rows"]
    singles = sorted((r for r in rows if r["kind"] == "single"), key=lambda r: -r["accuracy"])
    return [r for r in rows if r["kind"] != "single"] + singles[:TOP_SINGLES_IN_BLENDS]


def blend_table(b: BenchmarkResult) -> Table:
    bl = b.blends
    t = Table(title=f"{b.source}/{b.benchmark}: conversations of {bl['turns']} turns ({bl['n_conversations']}, "
                    f"learned blend: {bl['router']} + argmax)", title_justify="left")
    for col in ("method", "accuracy %", *(f"turn {i + 1}" for i in range(bl["turns"])), "cost/turn", "switches %"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in blend_rows(b):
        t.add_row(r["method"], fmt_pct(r["accuracy"]), *(fmt_pct(a) for a in r["per_turn_accuracy"]),
                  fmt_usd(r['cost_usd']), fmt_pct(r["switch_rate"]),
                  style="bold" if r["kind"] == "blend" else None)
    t.caption = blend_note(b)
    t.caption_justify = "left"
    return t


def blend_note(b: BenchmarkResult) -> str:
    return ("Each conversation chains independent questions of this benchmark (built from each test fold; the "
            "router and the weights learn from the training fold), so a turn is right when the model answers that "
            "question right. Engagement, the measure of blending's paper, needs live users: log per-turn choices "
            "with `herd serve --choice-log` and run the A/B test.")


# ---- plots ------------------------------------------------------------------------------
def _slug(b: BenchmarkResult) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{b.source}-{b.benchmark}")


# Distinct colours for methods (tab10 without its grey, which marks single models), another set
# for each router's cost sweep, and markers for when methods outnumber the colours.
METHOD_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                 "tab:cyan"]
SWEEP_STYLES = [("#1b9e77", "--"), ("#e6ab02", "-."), ("#444444", ":"), ("#66a61e", (0, (6, 2)))]
MARKERS = ["*", "P", "X", "D"]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def plot_cost_accuracy(b: BenchmarkResult, path: Path) -> Path | None:
    """Accuracy against cost: on the left zoomed on the routed methods and the best single model,
    on the right every model; single models labelled only on the Pareto frontier (and the best
    single model), labels pushed apart; every method and every router's cost sweep in one legend."""
    pts = [r for r in b.rows if r.kind in ("single", "router") and r.cost_usd and r.cost_coverage >= MIN_COST_COVERAGE]
    if not pts:
        return None
    plt = _pyplot()
    singles = [r for r in pts if r.kind == "single"]
    routed = [r for r in pts if r.kind == "router"]
    best = b.row("best-single")
    oracle = b.row("oracle")
    costs = np.array([r.cost_usd for r in pts])
    accs = np.array([100 * r.accuracy for r in pts])
    front = metrics.pareto_frontier(costs, accs)
    best_model = best.method.split(": ", 1)[-1]
    named = [r for i, r in enumerate(pts) if r.kind == "single" and (i in set(front) or r.method == best_model)]
    sweeps = {name: [p for p in curve if p[0] is not None] for name, curve in b.curves.items()}
    entries = len(routed) + len(sweeps) + 4
    rows_of_legend = math.ceil(entries / 3)
    fig, (zoom, full) = plt.subplots(1, 2, figsize=(13, 5.2 + 0.22 * rows_of_legend),  # room for the legend
                                     gridspec_kw={"width_ratios": [3, 2]})
    for ax in (zoom, full):
        ax.scatter([r.cost_usd for r in singles], [100 * r.accuracy for r in singles], c="0.6", s=20,
                   label="single models", zorder=2)
        ax.step(costs[front], accs[front], where="post", c="k", lw=1, alpha=0.5, label="Pareto frontier", zorder=1)
        for (name, curve), (color, dash) in zip(sweeps.items(), SWEEP_STYLES * 4):
            if curve:
                ax.plot([p[0] for p in curve], [100 * p[1] for p in curve], ls=dash, c=color, lw=1.4, alpha=0.9,
                        label=f"{name}: cost sweep", zorder=3)
        for i, r in enumerate(routed):
            ax.scatter([r.cost_usd], [100 * r.accuracy], color=METHOD_COLORS[i % len(METHOD_COLORS)],
                       marker=MARKERS[(i // len(METHOD_COLORS)) % len(MARKERS)], s=150, edgecolors="k",
                       linewidths=0.5, label=f"{r.method} ({100 * r.accuracy:.1f}%)", zorder=5)
        ax.axhline(100 * oracle.accuracy, ls=":", c="tab:gray", lw=1, label=f"oracle {100 * oracle.accuracy:.1f}%")
        ax.axhline(100 * best.accuracy, ls="-.", c="tab:gray", lw=1,
                   label=f"best single (train) {100 * best.accuracy:.1f}%")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.set_xlabel("mean cost per query, USD (log; ~ estimated where no recorded cost)")
    zoom.set_ylabel("accuracy %")
    # The zoom: where the routed methods and the best single model are.
    focus = [100 * r.accuracy for r in routed] + [100 * best.accuracy]
    lo, hi = min(focus), max(focus)
    pad = max(0.5, 0.15 * (hi - lo))
    zoom.set_ylim(lo - pad, hi + pad)
    seen = [r.cost_usd for r in pts if lo - pad <= 100 * r.accuracy <= hi + pad] or list(costs)
    zoom.set_xlim(min(seen) / 1.6, max(seen) * 1.6)
    full.set_ylim(max(0.0, accs.min() - 3), 100.5)
    full.set_xlim(costs.min() / 1.6, costs.max() * 1.6)
    zoom.set_title(f"zoomed: {lo - pad:.1f}-{hi + pad:.1f}% (routers and the best single model)", fontsize=9)
    full.set_title("full range: every model", fontsize=9)
    in_zoom = [r for r in named if lo - pad <= 100 * r.accuracy <= hi + pad]
    _label_points(zoom, in_zoom)
    _label_points(full, [r for r in named if r not in in_zoom])  # the rest; the zoom names those
    handles, labels = zoom.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{b.source} / {b.benchmark}: accuracy vs cost", fontsize=11)
    height = 5.2 + 0.22 * rows_of_legend
    fig.tight_layout(rect=(0, min(0.45, (0.15 + 0.2 * rows_of_legend) / height), 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label_points(ax, rows: list[MethodResult], gap: float = 0.05) -> None:
    """Name a few points without overlapping labels: sorted by height and pushed apart upward
    (in axes fractions, which a resize keeps), each joined to its point by a thin line."""
    to_axes = ax.transData + ax.transAxes.inverted()
    spots = sorted(((*to_axes.transform((r.cost_usd, 100 * r.accuracy)), r.method) for r in rows), key=lambda t: t[1])
    heights: list[float] = []
    for _, y, _ in spots:  # a little above its point (stars often sit at a model's own height), apart upward
        heights.append(max(y + gap / 2, heights[-1] + gap if heights else 0.03))
    for i in reversed(range(len(heights))):  # then down from the top where they ran over it
        heights[i] = min(heights[i], 0.97 if i == len(heights) - 1 else heights[i + 1] - gap)
    for (x, y, text), h in zip(spots, heights):
        left = x > 0.6  # near the right edge, the label goes to the point's left
        ax.annotate(text, xy=(x, y), xycoords="axes fraction", xytext=(x - 0.03 if left else x + 0.03, h),
                    textcoords="axes fraction", fontsize=7, va="center", ha="right" if left else "left",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"})


def plot_model_accuracy(b: BenchmarkResult, path: Path) -> Path:
    plt = _pyplot()
    singles = sorted((r for r in b.rows if r.kind == "single"), key=lambda r: r.accuracy)
    marks = [r for r in b.rows if r.kind in ("oracle", "best-single")] + [r for r in b.rows if r.kind == "router"]
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.22 * len(singles) + 1.2, 0.2 * len(marks) + 1.2)))
    ax.barh([r.method for r in singles], [100 * r.accuracy for r in singles], color="0.6")
    for i, r in enumerate(marks):
        ax.axvline(100 * r.accuracy, c=METHOD_COLORS[i % len(METHOD_COLORS)], lw=1.2,
                   ls=("-", "--", ":")[(i // len(METHOD_COLORS)) % 3], label=f"{r.method}: {100 * r.accuracy:.1f}%")
    ax.set_xlabel("accuracy % (out-of-fold)")
    ax.set_title(f"{b.source} / {b.benchmark}: per-model accuracy")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)  # beside the bars
    return _save(fig, path)


# ---- files ------------------------------------------------------------------------------
def write_metrics(ev: Evaluation, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(ev.to_json()), indent=2))
    return path


def _clean(x):
    """JSON has no NaN or inf: write null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def plot_cascades(b: BenchmarkResult, path: Path) -> Path | None:
    """Accuracy against the share answered by the first (owned) model, and against cost, as the
    deferral threshold moves."""
    if not b.cascade_curves:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for (method, pts), color in zip(b.cascade_curves.items(), METHOD_COLORS * 4):
        share = [100 * (p["ownership"] if p["ownership"] is not None else p["first_model_share"]) for p in pts]
        acc = [100 * p["accuracy"] for p in pts]
        left.plot(share, acc, "o-", ms=3, color=color, label=method)
        cost = [p["cost_usd"] for p in pts]
        if all(c is not None for c in cost):
            right.plot(cost, acc, "o-", ms=3, color=color, label=method)
        if "threshold" in pts[0]:  # a threshold sweep ends with the last model answering everything
            left.axhline(acc[-1], color=color, ls=":", lw=1)
    left.set_xlabel("owned share of queries, % (first model's share where ownership is unknown)")
    left.set_ylabel("accuracy %")
    right.set_xlabel("mean cost per query (USD)")
    right.set_ylabel("accuracy %")
    left.legend(fontsize=7)
    fig.suptitle(f"{b.source}/{b.benchmark}: cascades across deferral thresholds and agreement tolerances "
                 "(dotted: last model alone)")
    return _save(fig, path)


def plot_task_shares(b: BenchmarkResult, path: Path) -> Path | None:
    """For the most accurate routed method of a mixture: the share of each task sent to each model."""
    routed = [r for r in b.rows if r.kind == "router" and r.method in b.task_shares]
    if not routed:
        return None
    top = max(routed, key=lambda r: r.accuracy)
    shares = b.task_shares[top.method]
    tasks = list(b.tasks)
    grid = np.array([[shares.get(t, {}).get(m, 0.0) for m in b.models] for t in tasks])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(b.models), 1.2 + 0.35 * len(tasks)))
    im = ax.imshow(100 * grid, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(b.models)), b.models, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    for i in range(len(tasks)):
        for j in range(len(b.models)):
            if grid[i, j] >= 0.005:
                ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if grid[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="% of the task's queries")
    ax.set_title(f"{b.source}/{b.benchmark}: where {top.method} sends each task", fontsize=9)
    return _save(fig, path)


def plot_blends(b: BenchmarkResult, path: Path) -> Path | None:
    """Accuracy per turn for the blends, the best single model and the top single models."""
    if not b.blends:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    turns = np.arange(1, b.blends["turns"] + 1)
    for r, color in zip(blend_rows(b), METHOD_COLORS * 4):
        style = "o-" if r["kind"] == "blend" else "s--"
        cost = "" if r["cost_usd"] is None else f", ${r['cost_usd']:.2g}/turn"
        ax.plot(turns, [100 * a for a in r["per_turn_accuracy"]], style, ms=4, color=color,
                label=f"{r['method']} ({100 * r['accuracy']:.1f}%{cost})")
    ax.set_xlabel("turn")
    ax.set_ylabel("accuracy %")
    ax.set_xticks(turns)
    ax.legend(fontsize=7)
    ax.set_title(f"{b.source}/{b.benchmark}: conversations, per turn")
    return _save(fig, path)


def plot_pool_size(steps, router: str, path: Path) -> Path:
    """Oracle, routed and best-single accuracy as the greedy pool grows (the Herd paper's open
    question: what does each added model buy?)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = [st.k for st in steps]
    ax.plot(ks, [100 * st.oracle for st in steps], "o-", color="0.4", label="oracle (coverage)")
    ax.plot(ks, [np.nan if st.routed_accuracy is None else 100 * st.routed_accuracy for st in steps], "o-", color=METHOD_COLORS[0], label=f"{router} routed (CV)")
    ax.plot(ks, [100 * st.best_single for st in steps], "o--", color=METHOD_COLORS[1], label="best single in pool (CV)")
    for st in steps:
        ax.annotate(st.added, (st.k, 100 * st.oracle), fontsize=7, xytext=(3, 3), textcoords="offset points", rotation=20)
    ax.set_xlabel("pool size (greedy order)")
    ax.set_ylabel("accuracy %")
    ax.set_xticks(ks)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_select_report(selection: Selection, plot: Path, path: Path) -> Path:
    """``herd select``'s greedy path, the exhaustive check and the pool-size plot as one page."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in selection.columns())
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                   for row in selection.rows())
    notes = "".join(f"<li>{html.escape(x)}</li>" for x in [CAPTION, *selection.checks()])
    img = f"<img alt='pool size' src='data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}'>"
    section = (f"<section><h2>Greedy pool selection, k = {selection.k}</h2><table><thead><tr>{head}</tr></thead>"
               f"<tbody>{body}</tbody></table><ul class='notes'>{notes}</ul><div class='plots'>{img}</div></section>")
    constraints = selection.to_dict()["constraints"]
    path.write_text(_HTML.format(title=html.escape(f"herd select: {selection.data}"),
                                 intro=html.escape(f"constraints: {json.dumps(constraints)}"), body=section))
    return path


# ---- off-policy evaluation ------------------------------------------------------------
def _interval(e: Estimate, usd: bool = False) -> str:
    f = (lambda x: f"${x:.3g}") if usd else (lambda x: f"{x:.3f}")
    return f"{f(e.value)} ({f(e.low)} to {f(e.high)})"


def _estimates(label: str, found: dict[str, Estimate], usd: bool = False) -> str:
    return f"{label}: " + ", ".join(f"{k.upper()} {_interval(e, usd)}" for k, e in found.items())


def offpolicy_lines(r: OffPolicyResult) -> list[str]:
    """The logging policy's observed means, then per candidate its estimates (none when the log
    cannot tell) and the verdict in words."""
    out = [f"{r.n} logged request(s) with feedback, {r.explored} chosen by exploration; served by "
           f"{r.logging_policy or 'an unnamed policy'} over {', '.join(r.models)}",
           f"served (observed): score {_interval(r.logged_score)}"
           + (f", cost {_interval(r.logged_cost, True)}/request" if r.logged_cost else ""), ""]
    for c in r.candidates:
        picks = ", ".join(f"{share:.0%} {name}" for name, share in sorted(c.shares.items(), key=lambda t: -t[1]))
        out.append(f"{c.name}: picks {picks}; support on {c.coverage:.0%} of requests, {c.matched} matching the "
                   f"logged model (effective sample size {c.ess:.0f})")
        if c.score and not c.too_thin:
            out.append("  " + _estimates("score", c.score))
            if c.cost:
                out.append("  " + _estimates("cost/request", c.cost, True))
        out.append(f"  -> {c.verdict}")
    out += ["", f"95% intervals: normal approximation on per-row terms (SNIPS: delta method); reward model for DR "
                f"cross-fitted over {r.folds} folds; under {MIN_ESS} effective matching requests no estimate is given"]
    out += [f"note: {n}" for n in r.notes]
    return out


def write_offpolicy_report(r: OffPolicyResult, path: Path) -> Path:
    """The off-policy estimates as one page: a row per candidate, the verdict in words."""
    head = "".join(f"<th>{h}</th>" for h in ("candidate", "verdict", "support", "matching (effective)",
                                            "score IPS", "score SNIPS", "score DR", "cost DR"))

    def cell(c, kind, key, usd=False):
        found = getattr(c, kind).get(key)
        return "" if found is None or c.too_thin else html.escape(_interval(found, usd))

    body = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{html.escape(c.verdict)}</td><td>{c.coverage:.0%}</td>"
        f"<td>{c.matched} ({c.ess:.0f})</td><td>{cell(c, 'score', 'ips')}</td><td>{cell(c, 'score', 'snips')}</td>"
        f"<td>{cell(c, 'score', 'dr')}</td><td>{cell(c, 'cost', 'dr', True)}</td></tr>" for c in r.candidates)
    served = (f"<tr class='best-single'><td>served (observed)</td><td>the logging policy</td><td>100%</td><td>{r.n}</td>"
              f"<td colspan='3'>{html.escape(_interval(r.logged_score))}</td>"
              f"<td>{html.escape(_interval(r.logged_cost, True)) if r.logged_cost else 'n/a'}</td></tr>")
    lines = offpolicy_lines(r)
    notes = "".join(f"<li>{html.escape(x)}</li>" for x in lines[-1 - len(r.notes):])
    section = (f"<section><h2>Off-policy estimates</h2><table><thead><tr>{head}</tr></thead><tbody>{served}{body}"
               f"</tbody></table><ul class='notes'>{notes}</ul></section>")
    path.write_text(_HTML.format(title=html.escape(f"herd eval --off-policy: {r.origin}"),
                                 intro=html.escape(lines[0]), body=section))
    return path


# What each policy does, in words, for the report's readers.
POLICY_WORDS = {
    "argmax": "argmax asks the model most likely to be right (ties to the cheaper)",
    "safe": ("safe stays with the best single model of the training split unless another model's predicted "
             "P(correct) beats it by more than a margin tuned inside that split; margin=inf means no margin paid "
             "off there, so every query stays with the best single model"),
    "cost-aware": "cost-aware:W trades P(correct) against W x cost relative to the dearest model",
    "budget": "budget calibrates a cost weight on training scores to a spend per query (or a share of one model)",
    "cascade": "cascade asks models in order and stops at the first whose predicted P(correct) reaches a threshold",
    "cascade-check": "cascade-check reads each answer before accepting it",
    "agree": ("agree asks a first stage of models at once and keeps an answer enough of them give, else asks the "
              "strong model"),
}


def _policy_words(ev: Evaluation) -> str:
    names = {label.strip().split(":")[0] for label in ev.policy.split(",")}
    said = [words for name, words in POLICY_WORDS.items() if name in names]
    return (" Policies: " + "; ".join(said) + ".") if said else ""


ENGINE_WORDS = {"torch": "MiniLM encoder (torch)", "onnx-int8": "MiniLM encoder with int8 weights (ONNX)",
                "static": "static encoder distilled from MiniLM (token vectors averaged)"}


def _plots():
    """A benchmark's plots in the order report.html shows them, each with its file's suffix."""
    return (("cost-accuracy", plot_cost_accuracy), ("models", plot_model_accuracy), ("cascades", plot_cascades),
            ("task-shares", plot_task_shares), ("blends", plot_blends))


# Fewer plots than this are drawn in this process: starting workers would take longer.
PARALLEL_MIN_PLOTS = 6


def _draw(benchmarks: list[BenchmarkResult], task: tuple[int, str, Path]) -> Path | None:
    i, kind, path = task
    return dict(_plots())[kind](benchmarks[i], path)


def write_report(ev: Evaluation, out: Path, json_path: Path | None = None, workers: int | None = None
                 ) -> dict[str, Path]:
    """Write metrics.json, PNG plots and report.html into ``out``; return what was written.
    The plots are drawn in ``workers`` processes (default: as herd.workers says, for six plots
    or more); the files are the same either way."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"metrics": write_metrics(ev, json_path or out / "metrics.json")}
    tasks = [(i, kind, out / f"{_slug(b)}-{kind}.png") for i, b in enumerate(ev.benchmarks) for kind, _ in _plots()]
    if workers is None and len(tasks) < PARALLEL_MIN_PLOTS:
        workers = 1
    drawn = list(run_tasks(_draw, tasks, ev.benchmarks, workers=workers))
    sections = []
    for i, b in enumerate(ev.benchmarks):
        images = [path for (j, _, _), path in zip(tasks, drawn) if j == i and path]
        written.update({p.stem: p for p in images})
        sections.append(_html_section(b, ev, images))
    page = _HTML.format(
        title=html.escape(f"herd evaluation: {ev.dataset}"),
        intro=html.escape(
            f"{len(ev.benchmarks)} benchmark(s), {_protocol(ev)}, policies: {ev.policy}. "
            + (f"Sentence embeddings: the {ENGINE_WORDS.get(ev.embedding_engine, ev.embedding_engine)}. "
               if ev.embedding_engine else "")
            + ("The router and the best single model were chosen on the router's own training data."
               if ev.folds == 0 else
               "Every figure is out-of-fold: each query is scored by a router trained without it; "
               "'best single (train)' is chosen on each fold's training split.")
            + _policy_words(ev)
        ),
        body="\n".join(sections),
    )
    written["report"] = out / "report.html"
    written["report"].write_text(page)
    log = [row for b in ev.benchmarks for row in b.blend_log]
    if log:
        written["conversations"] = out / "conversations.jsonl"
        written["conversations"].write_text("".join(json.dumps(row) + "\n" for row in log))
    return written


def _html_section(b: BenchmarkResult, ev: Evaluation, images: list[Path]) -> str:
    rows, note = shown_rows(b)
    owned = _owned_shown(b)
    head = "".join(f"<th>{h}</th>" for h in ("method", "kind", "accuracy %", "cost/query", "latency s", "gap closed",
                                            *(["owned %"] if owned else [])))
    body = "".join(
        f"<tr class='{html.escape(r.kind)}'><td>{html.escape(r.method)}</td><td>{r.kind}</td>"
        f"<td>{fmt_pct(r.accuracy)}</td><td>{html.escape(fmt_cost(r))}</td>"
        f"<td>{fmt_latency(r.latency_s)}</td><td>{fmt_gap(r.gap_closed)}</td>"
        + (f"<td>{fmt_pct(r.ownership)}</td>" if owned else "") + "</tr>"
        for r in rows
    )
    line = headline(b)
    lead = f"<p class='headline'>{html.escape(line)}</p>" if line else ""
    notes = "".join(f"<li>{html.escape(x)}</li>" for x in [*readings(b), note, curve_summary(b), two_model_summary(b),
                                                            *cascade_summary(b)] + footnotes(b) if x)
    imgs = "".join(
        f"<img alt='{html.escape(p.stem)}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
        for p in images
    )
    return (f"<section><h2>{html.escape(_title(b, ev))}</h2>{lead}<table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table><ul class='notes'>{notes}</ul>{_html_tasks(b)}{_html_blends(b)}"
            f"<div class='plots'>{imgs}</div></section>")


def _html_tasks(b: BenchmarkResult) -> str:
    if not b.tasks:
        return ""
    methods = task_rows(b)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["task (queries)", *methods])
    body = "".join(f"<tr><td>{html.escape(f'{t} ({n})')}</td>"
                   + "".join(f"<td>{fmt_pct(b.per_task[m].get(t))}</td>" for m in methods) + "</tr>"
                   for t, n in b.tasks.items())
    return f"<h3>Accuracy % per task</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_blends(b: BenchmarkResult) -> str:
    if not b.blends:
        return ""
    turns = b.blends["turns"]
    head = "".join(f"<th>{h}</th>" for h in ("method", "accuracy %", *(f"turn {i + 1}" for i in range(turns)),
                                            "cost/turn", "switches %"))
    body = "".join(
        f"<tr class='{'router' if r['kind'] == 'blend' else r['kind']}'><td>{html.escape(r['method'])}</td>"
        f"<td>{fmt_pct(r['accuracy'])}</td>" + "".join(f"<td>{fmt_pct(a)}</td>" for a in r["per_turn_accuracy"])
        + f"<td>{fmt_usd(r['cost_usd'])}</td>"
        f"<td>{fmt_pct(r['switch_rate'])}</td></tr>"
        for r in blend_rows(b))
    return (f"<h3>Conversations: {b.blends['n_conversations']} of {turns} turns, learned blend "
            f"{html.escape(b.blends['router'])} + argmax</h3><table><thead><tr>{head}</tr></thead><tbody>{body}"
            f"</tbody></table><p class='notes'>{html.escape(blend_note(b))}</p>")


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child, td:nth-child(2) {{ text-align: left; }}
tr.router, tr.best-single {{ font-weight: bold; }}
tr.oracle td {{ color: #555; }}
.notes {{ font-size: 13px; color: #555; }}
.headline {{ font-weight: bold; background: #f3f6fa; padding: 6px 10px; border-left: 4px solid #4a7ab5; }}
.plots img {{ max-width: 100%; margin: 8px 0; }}
</style></head><body>
<h1>{title}</h1><p>{intro}</p>
{body}
</body></html>
"""
