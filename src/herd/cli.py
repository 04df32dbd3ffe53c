"""The `herd` command: a thin shell that parses, calls the library and formats."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from herd import __version__
from herd.errors import HerdError
from herd.import_formats import FORMATS
from herd.policies import POLICY_HELP

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Route each LLM query to the model that will answer it, cheaply.")
# Piped output (logs, CI) gets wide tables instead of 80-column ellipses. No markup: text from
# data, files and errors prints as it is ('[embed]' stays), styles are set explicitly.
console = (Console(soft_wrap=True, markup=False) if Console().is_terminal
           else Console(width=200, soft_wrap=True, markup=False))
err = Console(stderr=True, soft_wrap=True, markup=False)


def _readable_type(param, ctx) -> str | None:
    """Help shows an option's metavar or a plain word, not a Python annotation ('<list[str]>')."""
    if isinstance(param, typer.core.TyperArgument) or getattr(param, "is_flag", False):
        return None  # an argument's name says what it is; a flag takes no value
    if param.metavar:
        return param.metavar
    return {"int": "INTEGER", "float": "NUMBER", "bool": None}.get(param.bare_type(), "TEXT")


# Recent typer prints each parameter's annotation as its type; older ones print click's metavars.
if hasattr(getattr(typer.core, "_TyperParameter", None), "display_type"):
    typer.core._TyperParameter.display_type = _readable_type

# Idle connections are kept longer than clients keep theirs (httpx and the openai SDK: 5 s), so
# a client never sends a request on a connection the server is closing at the same moment.
KEEP_ALIVE_S = 15
DEMO_GROUPS = [("zeroeval", "gsm8k"), ("zeroeval", "math-l5"), ("zeroeval", "crux"), ("mmlu-pro", "mmlu-pro")]
DEMO_ROUTERS = ["knn", "logistic"]
DEFAULT_POLICIES = ["argmax", "safe", "agree"]
DEMO_POLICIES = [*DEFAULT_POLICIES, "agree:open"]
# The demo's mixture: LLMRouter's 13 tasks through one pool of 9 open models, with the text
# routers (fast) and their task-aware variants.
DEMO_MIX_SOURCE = "llmrouter"
DEMO_MIX_ROUTERS = ["logistic", "logistic-task"]
DEMO_MIX_POLICIES = ["argmax", "safe"]


def _fail(message: str) -> None:
    err.print(Text("error: ", style="bold red") + Text(message), highlight=False)
    raise typer.Exit(2)


def _split_list(values: Optional[list[str]]) -> Optional[list[str]]:
    """Accept repeated options and comma-separated lists alike."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _split_policies(values: Optional[list[str]]) -> Optional[list[str]]:
    """Like _split_list, except that a cascade's model list ('cascade:a,b') stays whole."""
    from herd.policies import split_specs

    return split_specs(values) if values else None


def _one_router(values: Optional[list[str]], default: str) -> str:
    """--router is a list everywhere; where one router is trained, a list of several is an error."""
    names = _split_list(values) or [default]
    if len(names) > 1:
        _fail(f"--router {','.join(names)}: this command takes one router (`herd eval` compares several)")
    return names[0]


def _tagged_policies(policies: list[str], tags: Optional[list[str]]) -> list[str]:
    """--tags open: agreement cascades chosen on data ask open-weights models first."""
    tags = _split_list(tags) or []
    unknown = [t for t in tags if t != "open"]
    if unknown:
        _fail(f"--tags {','.join(unknown)}: outcome data marks only 'open' (open_weights in models.csv)")
    return ["agree:open" if tags and p == "agree" else p for p in policies]


def _read_outcomes(data_dir, min_outcomes, size_prices, prices=None):
    from herd.data import Outcomes, find_data_dir
    from herd.pricing import DEFAULT_SIZE_PRICES, parse_size_prices

    schedule = parse_size_prices(size_prices) if size_prices else DEFAULT_SIZE_PRICES
    path = find_data_dir(data_dir)
    with console.status(Text(f"loading {path}")):
        data = Outcomes.load(path, min_outcomes=min_outcomes, size_prices=schedule)
    return path, data.with_prices(prices) if prices else data


def _pool_prices(pool_file: str | None) -> dict | None:
    """Each priced pool model's (input, output) USD per million tokens, by the name the outcome
    data uses (its router_name, else its name)."""
    if pool_file is None:
        return None
    from herd.pool import PoolError, load_pool

    config, _ = load_pool(pool_file)
    prices = {m.router_name or m.name: (m.price_in_per_mtok, m.price_out_per_mtok) for m in config.models
              if m.price_in_per_mtok is not None and m.price_out_per_mtok is not None}
    if not prices:
        raise PoolError(f"{pool_file}: no model has both price_in_per_mtok and price_out_per_mtok")
    console.print(f"prices from {pool_file} for {len(prices)} model(s): {', '.join(prices)}", markup=False)
    return prices


def _load_data(data_dir, sources, benchmarks, models, min_outcomes, size_prices, groups=None, loaded=None, prices=None):
    from herd.choicelog import is_live

    path, data = loaded or _read_outcomes(data_dir, min_outcomes, size_prices, prices)
    if is_live(data):
        _fail(f"{path} is live feedback (one model's outcome per query, with propensities): evaluate routers on it "
              f"with `herd eval {path} --off-policy`, or train on it beside benchmark data with `herd train DATA "
              f"--add {path}`")
    if groups:
        data = data.filter(source=sorted({s for s, _ in groups}), benchmark=sorted({b for _, b in groups}))
    data = data.filter(source=sources, benchmark=benchmarks, models=models)
    if data.queries.empty:
        _fail("no queries left after filtering")
    return path, data


def _progress_bar():
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console, transient=True)


def _step_progress(bar: Progress, benchmarks: int):
    """evaluate()'s progress callback on one bar: each step (embedding a benchmark's questions,
    its agreement cascades, its fold fits: the text after the benchmark up to a comma) restarts
    the bar, so the time left is read off that step's own pace."""
    task = bar.add_task("starting", total=1)
    seen: list[str] = []
    current = [None]

    def progress(message: str, done: int, total: int) -> None:
        label = message.split(":")[0]
        if label not in seen:
            seen.append(label)
        description = f"({len(seen)} of {max(benchmarks, len(seen))}) {message}"
        step = (label, message.split(":")[1].split(",")[0].strip(), total)
        if step != current[0]:
            current[0] = step
            bar.reset(task, total=max(total, 1), completed=done, description=description)
        else:
            bar.update(task, description=description, completed=done)

    return progress


def _run_eval(data_dir, sources, benchmarks, models, routers, policies, folds, seed, out, json_path, min_outcomes,
              size_prices, sweep, groups=None, conversations: int = 0, mix: bool = False, demo_mix: bool = False,
              pool_file: str | None = None) -> None:
    from herd.evaluation import start_evaluation
    from herd.policies import make_policy
    from herd.routers import make_router

    started = time.perf_counter()
    dirs = [r for r in routers if (Path(r) / "manifest.json").exists()]
    if dirs:
        if len(routers) > 1:
            _fail("give one trained router directory as --router, or router names, not both or several directories")
        return _run_eval_trained(dirs[0], data_dir, sources, benchmarks, models, out, json_path, min_outcomes,
                                 size_prices, sweep, started, pool_file)
    try:
        named = {name: make_router(name, seed=seed) for name in routers}
        chosen_policies = [make_policy(p) for p in policies]
        if demo_mix:  # the demo's tables are large: its worker processes import herd while the data loads
            from herd.workers import warm_up

            warm_up(None, ["herd.evaluation"])
        loaded = _read_outcomes(data_dir, min_outcomes, size_prices, _pool_prices(pool_file))
        path, data = _load_data(data_dir, sources, benchmarks, models, min_outcomes, size_prices, groups, loaded)
        mixture = loaded[1].filter(source=DEMO_MIX_SOURCE) if demo_mix else None
        if groups is None and not mix:
            _announce(data, len(named), len(chosen_policies), folds,
                      ask=data_dir is None and not sources and not benchmarks)
        console.print(f"herd {__version__} evaluating {len(data.groups())} benchmark(s)"
                      f"{' and a mixture' if mix or demo_mix else ''} from {path}")
        with _progress_bar() as bar:
            progress = _step_progress(bar, len(data.mixtures()) if mix else
                                      len(data.groups()) + (mixture is not None))
            evaluations = [start_evaluation(data, named, policy=chosen_policies, folds=folds, seed=seed,
                                            sweep=sweep, progress=progress, conversations=conversations, mix=mix)]
            if mixture is not None:  # started before the first is finished: the workers go on to it
                evaluations.append(start_evaluation(mixture, {r: make_router(r, seed=seed) for r in DEMO_MIX_ROUTERS},
                                                    policy=[make_policy(p) for p in DEMO_MIX_POLICIES], folds=folds,
                                                    seed=seed, sweep=sweep, progress=progress, mix=True))
            ev, *extra = [run.finish() for run in evaluations]
            for more in extra:
                ev.benchmarks += more.benchmarks
    except HerdError as e:
        _fail(str(e))
    _show(ev, out, json_path, started)


# More benchmarks than this in one `herd eval` is a long run: say what will run first.
MANY_BENCHMARKS = 4


def _announce(data, n_routers: int, n_policies: int, folds: int, ask: bool) -> None:
    """Print what a run of several benchmarks covers and its rough size; when nothing narrowed
    it (no DATA, --source or --benchmark) and a person is at the terminal, ask before it starts."""
    import sys

    groups = data.groups()
    if len(groups) < 2:
        return
    sizes = data.outcomes.groupby(["source", "benchmark"]).agg(queries=("qid", "nunique"), models=("model", "nunique"))
    console.print(f"will evaluate {len(groups)} benchmarks, {int(sizes['queries'].sum()):,} queries "
                  f"({int((sizes['queries'] * sizes['models']).sum()):,} outcomes): {folds} folds x {n_routers} "
                  f"router(s) x {n_policies} policy(ies) = {len(groups) * folds * n_routers} router fits")
    console.print("  " + ", ".join(f"{s}/{b} ({r.queries:,} x {r.models})" for (s, b), r in sizes.iterrows()))
    if ask and len(groups) > MANY_BENCHMARKS:
        console.print("  (narrow it with --source or --benchmark; `herd demo` runs four of them)")
        if sys.stdin.isatty() and not typer.confirm("go on?", default=True):
            raise typer.Exit(1)


def _run_eval_trained(router_dir, data_dir, sources, benchmarks, models, out, json_path, min_outcomes, size_prices,
                      sweep, started, pool_file=None) -> None:
    from herd import artifact
    from herd.evaluation import evaluate_trained

    try:
        trained = artifact.load(router_dir)
        path, data = _load_data(data_dir, sources, benchmarks, models, min_outcomes, size_prices,
                                prices=_pool_prices(pool_file))
        console.print(f"herd {__version__} evaluating the router in {router_dir} on "
                      f"{len(data.groups())} benchmark(s) from {path} as held-out data")
        with console.status("routing"):
            ev = evaluate_trained(trained, data, sweep=sweep)
    except HerdError as e:
        _fail(str(e))
    _show(ev, out, json_path, started)


def _show(ev, out, json_path, started) -> None:
    from herd.report import blend_table, console_table, headline, task_table, write_report

    for b in ev.benchmarks:
        line = headline(b)
        if line:
            console.print(Text(f"{b.source}/{b.benchmark}: {line}", style="bold"))
        console.print(console_table(b, ev))
        console.print()
        if b.tasks:
            console.print(task_table(b))
            console.print()
        if b.blends:
            console.print(blend_table(b))
            console.print()
    written = write_report(ev, Path(out), Path(json_path) if json_path else None)
    console.print(f"report:  {written['report'].resolve()}")
    console.print(f"metrics: {written['metrics'].resolve()}")
    console.print(f"plots:   {sum(p.suffix == '.png' for p in written.values())} PNG file(s) in {Path(out).resolve()}")
    if "conversations" in written:
        console.print(f"turns:   {written['conversations'].resolve()} (each blend's choice per conversation and turn)")
    console.print(f"took {time.perf_counter() - started:.1f} s")


NAMES = "NAME[,NAME...]"
DataArg = typer.Argument(None, help="Outcome data: a directory in the unified format or a long CSV/JSONL file. "
                         "Default: --data, $HERD_DATA, then ../shared/data.", show_default=False, metavar="DATA")
DataOpt = typer.Option(None, "--data", metavar="PATH", help="Same as the DATA argument.")
DemoDataOpt = typer.Option(None, "--data", metavar="PATH", help="Outcome data directory (default: $HERD_DATA, then "
                           "../shared/data).")
FoldsOpt = typer.Option(5, "--folds", min=2, help="Cross-validation folds (split by query).")
SeedOpt = typer.Option(0, "--seed", help="Seed for the folds and the routers' internal tuning.")
JsonOpt = typer.Option(None, "--json", metavar="FILE", help="Also write metrics.json here (default: OUT/metrics.json).")
MinOpt = typer.Option(20, "--min-outcomes", min=1, help="Reject a model with fewer outcomes on a benchmark.")
SizeOpt = typer.Option(None, "--size-prices", metavar="SCHEDULE", help="Price-by-size schedule for unpriced open models, "
                       "'MAX_B=USD_PER_MTOK,...', e.g. '8=0.2,70=0.9,inf=3.5'.")
PolicyOpt = typer.Option(None, "--policy", metavar="SPEC[,SPEC...]", help=f"Policy or policies: {POLICY_HELP}. Default: argmax,safe.")
TagsOpt = typer.Option(None, "--tags", metavar="TAG", help="'open': an 'agree' policy asks only open-weights models first.")
MixOpt = typer.Option(False, "--mix", help="Pool every benchmark of a source (or those given by --benchmark) into "
                      "one mixture of tasks over the models they share: folds stratified by task, with the best "
                      "model per task, a shuffled control and per-task figures.")
SweepOpt = typer.Option(True, "--sweep/--no-sweep", help="Sweep a cost weight for each router's cost-quality curve.")


@app.command("eval")
def eval_cmd(
    data: Optional[str] = DataArg,
    data_opt: Optional[str] = DataOpt,
    source: Optional[list[str]] = typer.Option(None, "--source", metavar=NAMES, help="Source(s) to keep; repeat or "
                                               "comma-separate."),
    benchmark: Optional[list[str]] = typer.Option(None, "--benchmark", metavar=NAMES, help="Benchmark(s) to keep."),
    models: Optional[list[str]] = typer.Option(None, "--models", metavar=NAMES, help="Model(s) to keep."),
    router: Optional[list[str]] = typer.Option(None, "--router", metavar=NAMES, help=f"Router(s) by name (default {','.join(DEMO_ROUTERS)}; see `herd routers`), "
                                         "or one directory from `herd train` to score on this data as held-out."),
    policy: Optional[list[str]] = PolicyOpt,
    folds: int = FoldsOpt,
    seed: int = SeedOpt,
    out: str = typer.Option("herd-report", "--out", "-o", metavar="DIR", help="Directory for report.html, plots and metrics.json."),
    json_path: Optional[str] = JsonOpt,
    min_outcomes: int = MinOpt,
    size_prices: Optional[str] = SizeOpt,
    sweep: bool = SweepOpt,
    tags: Optional[list[str]] = TagsOpt,
    mix: bool = MixOpt,
    conversations: int = typer.Option(0, "--conversations", min=0, help="Also replay conversations of this many "
                                      "turns (chained questions) under single models, uniform/weighted/learned blends."),
    pool_file: Optional[str] = typer.Option(None, "--pool", metavar="POOL", help="Price the models from this pool "
                                            "file (per million tokens; by router_name, else name); recorded costs stay."),
    off_policy: bool = typer.Option(False, "--off-policy", help="DATA is live traffic from `herd import choice-log`: "
                                    "estimate each candidate's mean score and cost on it (IPS, SNIPS, doubly robust, "
                                    "95% CIs) beside the policy that served it. Candidates: --router x --policy "
                                    "cross-fitted on the log (default logistic, argmax), and/or --candidate."),
    candidate: Optional[list[str]] = typer.Option(None, "--candidate", metavar="ROUTER_DIR", help="With --off-policy: "
                                                  "a router trained by `herd train`, routing the logged queries as it "
                                                  "would; repeat for several."),
) -> None:
    """Cross-validate routers against oracle, random, single models and the best single model.

    \b
    herd eval runs/gsm8k --router knn,logistic --policy argmax,safe
    herd eval runs/live --off-policy --policy argmax,cost-aware:0.5 --candidate router/
    """
    if off_policy:
        other = [flag for flag, given in (("--source", source), ("--benchmark", benchmark), ("--models", models),
                                          ("--mix", mix), ("--conversations", conversations), ("--pool", pool_file),
                                          ("--tags", tags)) if given]
        if other:
            _fail(f"{', '.join(other)}: not for --off-policy, which reads one log as it is")
        return _run_off_policy(data or data_opt, _split_list(router), _split_policies(policy), candidate or [],
                               folds, seed, out, json_path)
    if candidate:
        _fail("--candidate goes with --off-policy")
    _run_eval(data or data_opt, _split_list(source), _split_list(benchmark), _split_list(models),
              _split_list(router) or DEMO_ROUTERS, _tagged_policies(_split_policies(policy) or DEFAULT_POLICIES, tags),
              folds, seed, out, json_path, min_outcomes, size_prices, sweep, conversations=conversations, mix=mix,
              pool_file=pool_file)


def _run_off_policy(data_dir, routers, policies, candidates, folds, seed, out, json_path) -> None:
    import json

    from herd import artifact
    from herd.data import Outcomes, find_data_dir
    from herd.offpolicy import evaluate_log
    from herd.policies import make_policy
    from herd.report import offpolicy_lines, write_offpolicy_report
    from herd.routers import make_router

    started = time.perf_counter()
    try:
        path = find_data_dir(data_dir)
        chosen = {}
        if routers or policies or not candidates:
            for name in routers or ["logistic"]:
                for p in policies or ["argmax"]:
                    policy = make_policy(p)
                    chosen[f"{name} ({policy.label})"] = (make_router(name, seed=seed), policy)
        for d in candidates:
            trained = artifact.load(d)
            chosen[f"{d} ({trained.manifest['router']['name']} + {trained.policy.label})"] = trained
        # Live traffic has one outcome per request: a model's count says nothing of its coverage.
        data = Outcomes.load(path, min_outcomes=1)
        console.print(f"herd {__version__} off-policy evaluation of {len(chosen)} candidate(s) on {path}")
        with console.status("cross-fitting the reward model and the candidates") as status:
            result = evaluate_log(data, chosen, folds=folds, seed=seed,
                                  progress=lambda name: status.update(f"estimating {name}"))
    except HerdError as e:
        _fail(str(e))
    for line in offpolicy_lines(result):
        console.print(line, markup=False, highlight=False)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = Path(json_path) if json_path else out_dir / "offpolicy.json"
    metrics_path.write_text(json.dumps(result.to_json(), indent=2))
    page = write_offpolicy_report(result, out_dir / "offpolicy.html")
    console.print(f"report:  {page.resolve()}")
    console.print(f"metrics: {metrics_path.resolve()}")
    console.print(f"took {time.perf_counter() - started:.1f} s")


def _demo_engine() -> None:
    """A first run embeds ~15k questions: MiniLM itself takes 5-10 minutes of 2 cores for that,
    its static distillation (held-out routing within noise of it) about one, once."""
    import importlib.util
    import os

    # Distilling needs model2vec's distill extra and torch (the embed extra) besides model2vec.
    can_distill = all(importlib.util.find_spec(m) for m in ("model2vec", "skeletoken", "torch", "transformers"))
    if not os.environ.get("HERD_EMBED_ENGINE") and can_distill:
        os.environ["HERD_EMBED_ENGINE"] = "static"


@app.command()
def demo(
    data: Optional[str] = DemoDataOpt,
    router: Optional[list[str]] = typer.Option(None, "--router", metavar=NAMES, help="Router(s) by name."),
    policy: Optional[list[str]] = PolicyOpt,
    folds: int = FoldsOpt,
    seed: int = SeedOpt,
    out: str = typer.Option("herd-demo", "--out", "-o", metavar="DIR", help="Directory for report.html, plots and metrics.json."),
    size_prices: Optional[str] = SizeOpt,
) -> None:
    """`herd eval` on ZeroEval GSM8K, MATH-L5, CRUXEval and MMLU-Pro from the shipped public data, then
    LLMRouter's 13 tasks as one mixture. Sentence embeddings come from the static engine where
    it is installed (unless HERD_EMBED_ENGINE says otherwise)."""
    _demo_engine()
    _run_eval(data, None, None, None, _split_list(router) or DEMO_ROUTERS, _split_policies(policy) or DEMO_POLICIES,
              folds, seed, out, None, 20, size_prices, True, groups=DEMO_GROUPS, demo_mix=True)


@app.command()
def train(
    data: Optional[str] = DataArg,
    data_opt: Optional[str] = DataOpt,
    source: Optional[list[str]] = typer.Option(None, "--source", metavar=NAMES, help="Source(s) to train on."),
    benchmark: Optional[list[str]] = typer.Option(None, "--benchmark", metavar=NAMES, help="Benchmark(s) to train on."),
    models: Optional[list[str]] = typer.Option(None, "--models", metavar=NAMES, help="Pool models (default: all in "
                                               "the data)."),
    router: Optional[list[str]] = typer.Option(None, "--router", metavar="NAME", help="One router by name (default "
                                               "auto); see `herd routers`."),
    policy: str = typer.Option("safe", "--policy", metavar="SPEC", help=f"One of: {POLICY_HELP}."),
    tags: Optional[list[str]] = TagsOpt,
    mix: bool = typer.Option(False, "--mix", help="Train on the benchmarks given (or all of one source) as one "
                             "mixture of tasks over the models they share; routers may read each query's task."),
    out: str = typer.Option(..., "--out", "-o", metavar="DIR", help="Directory to write the router artifact to."),
    seed: int = SeedOpt,
    min_outcomes: int = MinOpt,
    size_prices: Optional[str] = SizeOpt,
    add: Optional[str] = typer.Option(None, "--add", metavar="DIR", help="Live feedback (from `herd import "
                                      "choice-log`) the router learns from too, beside DATA; the policy is tuned "
                                      "and validated on DATA. Routers: logistic, knn, cluster and their variants "
                                      "(default logistic)."),
    add_weight: float = typer.Option(1.0, "--add-weight", metavar="W", help="With --add: what one feedback answer "
                                     "counts against one outcome of DATA, on average (inverse-propensity weighted "
                                     "per model, so explored answers count for the queries the policy avoided)."),
) -> None:
    """Fit a router and policy on outcome data and save them as an artifact directory.

    \b
    herd train ../shared/data --source zeroeval --benchmark gsm8k -o router
    herd train ../shared/data --source zeroeval --benchmark gsm8k --add runs/live --add-weight 2 -o router2
    """
    from herd import artifact, choicelog
    from herd.data import Outcomes
    from herd.policies import Explore, make_policy
    from herd.routers import make_router, weighted_names

    started = time.perf_counter()
    router = _one_router(router, "logistic" if add else "auto")
    if add is None and add_weight != 1.0:
        _fail("--add-weight weighs the feedback given by --add DIR")
    if add is not None and not add_weight > 0:
        _fail(f"--add-weight {add_weight:g}: give a weight more than 0")
    weights = notes = None
    try:
        proto, chosen_policy = make_router(router, seed=seed), make_policy(_tagged_policies([policy], tags)[0])
        if add is not None and not proto.takes_weights:
            _fail(f"--router {router} cannot weigh outcomes, which --add needs; use one of: {', '.join(weighted_names())}")
        if isinstance(chosen_policy, Explore):  # a serving choice: the artifact keeps the policy it wraps
            _fail(f"--policy {policy}: exploration is chosen when serving; train with --policy "
                  f"{chosen_policy.policy.label} and serve with 'trained+explore:{chosen_policy.eps:g}' or --explore")
        path, outcomes = _load_data(data or data_opt, _split_list(source), _split_list(benchmark),
                                    _split_list(models), min_outcomes, size_prices)
        if mix:
            mixtures = outcomes.mixtures()
            if len(mixtures) > 1:
                _fail(f"--mix: the data holds mixtures of {len(mixtures)} sources; pick one with --source")
            outcomes = mixtures[0]
        if add is None:
            m = outcomes.matrix()
        else:
            live = Outcomes.load(add, min_outcomes=1)
            if not choicelog.is_live(live):
                _fail(f"--add {add}: not live feedback (no propensity column); make it with `herd import choice-log`")
            m, weights, notes = choicelog.with_feedback(outcomes, live, add_weight)
        with _progress_bar() as bar:
            task = bar.add_task(f"features for {m.n_queries} queries", total=1)
            proto.prepare(m.texts, progress=lambda done, total: bar.update(task, completed=done, total=total))
            bar.update(task, description=f"fitting {router} and tuning {chosen_policy.label}", completed=0, total=None)
            trained = artifact.train(router, proto, chosen_policy, m, seed=seed, data_origin=str(path),
                                     sample_weight=weights)
        if add is not None:
            trained.manifest["training_data"]["feedback"] = {"origin": str(add), "weight": add_weight}
        artifact.save(trained, out)
    except HerdError as e:
        _fail(str(e))
    for note in notes or []:
        err.print(f"note: {note}", markup=False, highlight=False)
    partial = trained.manifest["training_data"].get("partial_queries", 0)
    if add is not None:
        console.print(f"the router learnt from {partial} feedback answer(s) of {add} at weight {add_weight:g} "
                      "(inverse-propensity weighted per model) beside the outcomes below")
    v = trained.manifest["validation"]
    gap = "" if v["gap_closed"] is None else f", gap closed {100 * v['gap_closed']:+.1f}%"
    fitted = [x for x in (trained.manifest["router"]["fitted"], trained.manifest["policy"]["fitted"]) if x]
    console.print(f"trained {router} + {chosen_policy.label}{' (' + ', '.join(fitted) + ')' if fitted else ''} "
                  f"on {m.n_queries - partial} queries x {len(m.models)} models")
    cost = ""
    if v.get("cost_usd") is not None and v.get("best_single_cost_usd"):
        cost = f"; cost ${v['cost_usd']:.3g}/query, {v['cost_usd'] / v['best_single_cost_usd']:.0%} of the best single's"
    console.print(f"validation ({v['method']}): accuracy {100 * v['accuracy']:.2f}% vs best single "
                  f"{v['best_single']} {100 * v['best_single_accuracy']:.2f}%, oracle {100 * v['oracle']:.2f}%{gap}{cost}")
    console.print(f"what it will do (on that validation data): {_what_it_does(v)}")
    console.print(f"wrote {Path(out).resolve()} in {time.perf_counter() - started:.1f} s")


def _what_it_does(v: dict) -> str:
    """The trained policy's behaviour on its validation data, and a cheaper one read off the
    validation cost curve, in one line."""
    best, shares = v["best_single"], v.get("shares") or {}
    if len(shares) == 1:
        (only,) = shares
        text = (f"always {best}, the best single model: no other model was predicted better by enough to pay off"
                if only == best else f"always {only}")
    else:
        named = [f"{share:.0%} to {name}" for name, share in list(shares.items())[:4]]
        named += [f"{sum(list(shares.values())[4:]):.0%} to {len(shares) - 4} others"] if len(shares) > 4 else []
        cost = (f", {v['cost_usd'] / v['best_single_cost_usd']:.0%} of {best}'s cost"
                if v.get("cost_usd") is not None and v.get("best_single_cost_usd") else "")
        text = (f"routes {', '.join(named)}: accuracy {100 * v['accuracy']:.2f}% "
                f"({100 * (v['accuracy'] - v['best_single_accuracy']):+.2f} pt vs {best}){cost}")
    c = v.get("cheaper")
    if c:
        text += (f"; for lower cost at {100 * (c['accuracy'] - v['accuracy']):+.1f} pt use `--policy {c['spec']}` "
                 f"(about {c['cost_usd'] / c['best_single_cost_usd']:.0%} of {best}'s cost)")
    elif "cheaper" in v and v.get("best_single_cost_usd"):
        text += "; no cost-aware policy spends under 80% of that within 2 pt on this data"
    return text


@app.command()
def route(
    router_dir: str = typer.Argument(..., metavar="ROUTER_DIR", help="A directory written by `herd train`."),
    text: Optional[str] = typer.Argument(None, metavar="TEXT", help="The query to route.", show_default=False),
    file: Optional[str] = typer.Option(None, "--file", "-f", metavar="FILE", help="JSONL with one query per line: "
                                       "{\"text\": ...} (or \"question\"), optional \"id\"."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per query on stdout."),
    top: int = typer.Option(10, "--top", min=1, help="How many per-model scores to show."),
    task: Optional[str] = typer.Option(None, "--task", help="The queries' task (a benchmark of the router's mixture "
                                       "or a category), for routers and policies that read it; a --file line's "
                                       "\"task\" field wins."),
) -> None:
    """Route queries with a trained router: the chosen model, why, and every model's score."""
    import json

    from rich.table import Table

    from herd import artifact

    if (text is None) == (file is None):
        _fail("give either a query text or --file FILE (not both)")
    try:
        ids, texts, tasks = _read_queries(file) if file else ([None], [text], [None])
        tasks = [t if t is not None else task for t in tasks]
        trained = artifact.load(router_dir)
        started = time.perf_counter()
        scores, decision = trained.route(texts, tasks if any(t is not None for t in tasks) else None)
        ms = 1000 * (time.perf_counter() - started) / len(texts)
    except HerdError as e:
        _fail(str(e))
    for i, (qid, row) in enumerate(zip(ids, scores)):
        chosen = trained.models[decision.choice[i]]
        ranked = sorted(zip(trained.models, row), key=lambda t: -t[1])
        if as_json:
            print(json.dumps({"id": qid, "model": chosen, "reason": decision.reasons[i],
                              "scores": {name: round(float(p), 4) for name, p in ranked}}))
            continue
        console.print(Text(chosen, style="bold") + (f"  (query {qid})" if qid is not None else ""))
        console.print(f"  {decision.reasons[i]}")
        t = Table(show_header=True, box=None, padding=(0, 2))
        t.add_column("model")
        t.add_column("P(correct)", justify="right")
        for name, p in ranked[:top]:
            t.add_row(name, f"{p:.3f}", style="bold" if name == chosen else None)
        console.print(t)
    if not as_json:
        console.print(f"routing took {ms:.2f} ms per query")


def _read_queries(path: str) -> tuple[list, list[str], list]:
    from herd.data import HerdDataError
    from herd.jsonl import read_jsonl

    ids, texts, tasks = [], [], []
    for n, rec in read_jsonl(path, HerdDataError):
        text = rec.get("text", rec.get("question")) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            raise HerdDataError(f'{path}, line {n}: needs a string field "text" (or "question")')
        task = rec.get("task")
        if task is not None and not isinstance(task, str):
            raise HerdDataError(f'{path}, line {n}: "task" must be a string')
        ids.append(rec.get("id", n))
        texts.append(text)
        tasks.append(task)
    if not texts:
        raise HerdDataError(f"{path}: no queries")
    return ids, texts, tasks


@app.command()
def serve(
    pool: str = typer.Argument(..., metavar="POOL", help="Pool file (YAML): models, router, policies."),
    host: str = typer.Option("127.0.0.1", "--host", envvar="HERD_HOST",
                             help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, "--port", envvar="HERD_PORT", help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (share the port; metrics add up)."),
    api_keys_file: Optional[str] = typer.Option(None, "--api-keys-file", help="File with one client API key per line, "
                                                "or YAML naming each key with its limits (rpm, tpm, budgets, models); "
                                                "keys in HERD_API_KEYS (comma-separated) also count. Keys asked for "
                                                "but none read: herd does not start."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve without API keys; needed beyond loopback, or when "
                                 "a keys file or HERD_API_KEYS holds no key."),
    graceful_timeout: float = typer.Option(30.0, "--graceful-timeout", help="Seconds in-flight requests get to finish "
                                           "after SIGTERM/Ctrl-C."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    choice_log: Optional[str] = typer.Option(None, "--choice-log", help="Append one JSON line per answered request "
                                             "(session, turn, choice, model, reason, cost) to this file."),
    log_format: str = typer.Option("text", "--log-format", help="text, or json: every log line one JSON object, "
                                   "with an access and a decision line per request carrying its request id."),
    log_prompts: bool = typer.Option(False, "--log-prompts", help="The choice log also keeps the text the router "
                                     "scored ('query'), never for private requests; what `herd import choice-log` "
                                     "trains on."),
    explore: Optional[float] = typer.Option(None, "--explore", min=0, max=1, metavar="EPS", help="Every route whose "
                                            "policy picks one model sends this share of requests to a model drawn "
                                            "uniformly among those allowed (constraints and resting backends kept); "
                                            "each choice's probability is in the choice log. A pool policy's own "
                                            "'+explore:EPS' wins. Default: no exploration."),
    feedback_log: Optional[str] = typer.Option(None, "--feedback-log", metavar="FILE", help="Take POST /v1/feedback "
                                               "({request_id, score 0..1, label?, comment?} for an answered request) "
                                               "and append each to this file; with --workers N it needs shared "
                                               "state (HERD_STATE_URL or gateway.state)."),
    explore_seed: Optional[int] = typer.Option(None, "--explore-seed", help="Seed of the exploration draws (each "
                                               "worker draws the same sequence); default: fresh each start."),
) -> None:
    """Run the OpenAI-compatible routing gateway.

    \b
    herd train ../shared/data --source zeroeval --benchmark gsm8k --router logistic -o router
    herd serve pool.yaml --port 8000
    curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model": "herd", "messages": [{"role": "user", "content": "What is 17 * 23?"}]}'

    Clients use model "herd" (routed with the default policy), "herd:NAME" (a policy named in
    the pool file) or a pool model's name (no routing). See docs/serving.md for the pool file.
    To learn from your own traffic: --choice-log, --log-prompts, --feedback-log and --explore 0.05
    (docs/feedback.md).
    """
    import copy
    import logging
    import os
    import shutil
    import tempfile

    import uvicorn

    from herd.gateway.app import ENV_EXPLORE, ENV_EXPLORE_SEED, ENV_KEYS_FILE, ENV_LOG_PROMPTS, ENV_POOL, build_app
    from herd.gateway.keys import serving_keys
    from herd.gateway.choices import ENV_CHOICE_LOG
    from herd.gateway.feedback import ENV_FEEDBACK_LOG
    from herd.gateway.state import ENV_STATE_URL
    from herd.http_guard import http_protocol
    from herd.json_logs import ENV_LOG_FORMAT, JsonFormatter, json_log_config

    if log_format not in ("text", "json"):
        _fail(f"--log-format {log_format}: choose text or json")
    as_json = log_format == "json"
    try:
        keys = serving_keys(api_keys_file, no_auth, host)
        # Validate everything before any worker starts.
        app_ = build_app(pool, keys, choice_log, as_json, log_prompts=log_prompts, explore=explore,
                         explore_seed=explore_seed, feedback_log=feedback_log, freeze_heap=True)
        # Load the router's features here too (an embedding engine may export its model once):
        # a failure is then one line, not a traceback from each worker's start-up.
        app_.state.gateway.selector.warm_up()
    except OSError as e:
        _fail(f"{e.filename}: {e.strerror}")
    except HerdError as e:
        _fail(str(e))
    if feedback_log and workers > 1 and not (os.environ.get(ENV_STATE_URL) or app_.state.gateway.pool.gateway.state):
        _fail(f"--feedback-log with --workers {workers}: each worker would know only the requests it answered, and "
              "feedback reaching another one would be refused; share them in Redis (HERD_STATE_URL or gateway.state "
              "in the pool file) or serve with --workers 1")
    started = (f"herd {__version__} serving {pool} on http://{host}:{port}/v1 "
               f"({workers} worker{'s' if workers > 1 else ''}, {'API keys required' if keys else 'no auth'})")
    if as_json:
        err.file.write(JsonFormatter().format(logging.makeLogRecord({"name": "herd", "levelname": "INFO",
                                                                     "msg": started})) + "\n")
    else:
        err.print(started)
    # herd's own lines (a cut connection, an unforeseen error) go where uvicorn's go, at its level.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["herd"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    log_config["filters"] = {"no_query": {"()": "herd.http_guard.NoQueryString"}}
    log_config["handlers"]["access"]["filters"] = ["no_query"]
    options = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout,
                   http=http_protocol(app_.state.gateway.pool.gateway), log_config=log_config,
                   timeout_keep_alive=KEEP_ALIVE_S)
    if as_json:  # herd writes the access lines, with the request id uvicorn's lack
        options.update(log_config=json_log_config(log_config, log_level), access_log=False)
        os.environ[ENV_LOG_FORMAT] = "json"
    if workers == 1:
        uvicorn.run(app_, **options)
        return
    os.environ[ENV_POOL] = str(Path(pool).resolve())
    if api_keys_file:
        os.environ[ENV_KEYS_FILE] = str(Path(api_keys_file).resolve())
    if choice_log:
        os.environ[ENV_CHOICE_LOG] = str(Path(choice_log).resolve())
    if feedback_log:
        os.environ[ENV_FEEDBACK_LOG] = str(Path(feedback_log).resolve())
    if log_prompts:
        os.environ[ENV_LOG_PROMPTS] = "1"
    if explore is not None:
        os.environ[ENV_EXPLORE] = repr(explore)
    if explore_seed is not None:
        os.environ[ENV_EXPLORE_SEED] = str(explore_seed)
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="herd-metrics-")
    try:
        uvicorn.run("herd.gateway.app:app_from_env", factory=True, workers=workers, **options)
    finally:
        if own_dir:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


@app.command()
def collect(
    pool: str = typer.Argument(..., metavar="POOL", help="Pool file (YAML): the models to ask; see docs/serving.md."),
    task: str = typer.Option(..., "--task", help="gsm8k, SOURCE/BENCHMARK of an outcome dataset with gold answers "
                             "(e.g. zeroeval/math-l5), or a JSONL file of {\"id\", \"question\", \"answer\"}."),
    out: str = typer.Option(..., "--out", "-o", metavar="DIR", help="Run directory: the call log and the outcome tables go here."),
    split: str = typer.Option("test", "--split", help="gsm8k: test or train."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Ask only the first N questions."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip the first N questions."),
    samples: int = typer.Option(1, "--samples", min=1, help="Answers per question and model; maj@k and the share "
                                "of samples right are both recorded."),
    grader: Optional[str] = typer.Option(None, "--grader", help="number, choice, exact, string, literal or math "
                                         "(default: the task's own; string, the answer after 'The answer is', for JSONL tasks)."),
    shots: int = typer.Option(5, "--shots", min=0, help="Few-shot examples for completion-style (base) models."),
    templates: Optional[str] = typer.Option(None, "--templates", metavar="DIR", help="Directory overriding zcot.txt, "
                                            "fcot_example.txt and/or fcot_query.txt."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Default: 0 for one sample, 0.7 for more."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1),
    models: Optional[list[str]] = typer.Option(None, "--models", metavar=NAMES, help="Only these pool models."),
    max_retries: int = typer.Option(5, "--max-retries", min=0, help="Retries of a failing call before it is "
                                    "recorded as a failure."),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing the few-shot examples."),
    data_dir: Optional[str] = typer.Option(None, "--data", metavar="DIR", help="Where gsm8k and outcome-dataset tasks are read."),
) -> None:
    """Ask every pool model the task's questions, grade the answers, and record outcomes.

    \b
    herd collect pool.yaml --task gsm8k --limit 500 --samples 10 -o runs/gsm8k
    herd collect pool.yaml --task my_tasks.jsonl --grader number -o runs/mine
    herd eval runs/gsm8k

    Every finished call is logged to OUT/calls.jsonl at once; rerunning the same command after
    Ctrl-C or a crash asks only what is missing. OUT then holds outcomes.parquet, queries.parquet
    and models.csv in the unified format.
    """
    from herd.collect.run import plan_task

    try:
        plan = plan_task(pool, task, out, models=_split_list(models), split=split, limit=limit, offset=offset,
                         samples=samples, grader=grader, shots=shots, templates=templates, temperature=temperature,
                         max_tokens=max_tokens, max_retries=max_retries, seed=seed, data_dir=data_dir)
    except HerdError as e:
        _fail(str(e))
    if plan.set_aside:
        err.print(Text("note: ", style="yellow") + f"{sum(plan.set_aside.values())} recorded answers from other "
                  f"settings are set aside, not mixed in ({', '.join(f'{k}: {v}' for k, v in plan.set_aside.items())})")
    console.print(f"{plan.task.name}: {len(plan.task.items)} questions x {len(plan.asked)} models x {samples} "
                  f"sample(s) = {plan.mine} calls; {plan.recorded} already recorded in {out}")
    started = time.perf_counter()
    with Progress(TextColumn("{task.description:<28}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        ids = {name: bar.add_task(name, total=n, info="") for name, n in plan.todo_per_model().items()}

        def on_call(name, tally):
            spent = time.perf_counter() - started
            rate = (tally.answered + tally.failed) / spent if spent > 0 else 0.0
            bar.update(ids[name], completed=tally.answered + tally.failed,
                       info=f"{rate:5.1f}/s {tally.tokens:>8,} tok ${tally.cost:.4f}" + (f" {tally.failed} failed" if tally.failed else ""))

        collected = plan.run(on_call)
    if collected.interrupted:
        err.print("interrupted: what finished is recorded; run the same command to ask the rest")
        raise typer.Exit(130)
    _collect_summary(collected)
    console.print(f"wrote {collected.outcomes} outcomes on {collected.queries} questions to {Path(out).resolve()} "
                  f"in {collected.seconds:.1f} s; next: herd eval {out}")


def _collect_summary(collected) -> None:
    from rich.table import Table

    t = Table(title="collected", show_header=True)
    k = collected.samples
    scores = ["accuracy"] if k == 1 else [f"maj@{k}", "samples right"]
    for col in ("model", "questions", *scores, "latency s", "tokens out", "cost/query $", "failed calls"):
        t.add_column(col, justify="left" if col == "model" else "right")

    def shown(value, fmt):
        return "-" if value is None else format(value, fmt)

    for r in collected.summary():
        pct = ["-" if r[c] is None else f"{100 * r[c]:.1f}%" for c in ("correct", "share_correct")[:len(scores)]]
        t.add_row(r["model"], str(r["questions"]), *pct, shown(r["latency_s"], ".2f"),
                  shown(r["output_tokens"], ".0f"), shown(r["cost_usd"], ".2g"),
                  str(r["failed"]) + (f" ({', '.join(r['errors'])})" if r["errors"] else ""))
    console.print(t)


@app.command("import")
def import_cmd(
    kind: str = typer.Argument(..., metavar="FORMAT", help="; ".join(f"{name}: {f.help}" for name, f in FORMATS.items())
                               + "."),
    paths: list[str] = typer.Argument(..., metavar="FILE", help="Files to import (lm-eval: samples_*.jsonl; routellm: "
                                      "*.csv; choice-log: the log of `herd serve --choice-log`)."),
    out: str = typer.Option(..., "--out", "-o", metavar="DIR", help="Directory to write the unified format to."),
    model: Optional[str] = typer.Option(None, "--model", help="lm-eval: the model's name (default: the folder "
                                        "lm-eval wrote the samples under)."),
    filter_name: Optional[str] = typer.Option(None, "--filter", help="lm-eval: which answer filter to keep when a task "
                                              "has several (default: the first in the file)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="long: benchmark name when the file has no "
                                            "benchmark column (default: the file name); choice-log: the benchmark "
                                            "the live queries are filed under (default: feedback)."),
    feedback: Optional[str] = typer.Option(None, "--feedback", metavar="FILE", help="choice-log: the feedback log "
                                           "(`herd serve --feedback-log`) to join on the request id."),
    source: Optional[str] = typer.Option(None, "--source", help="choice-log: the source the live queries are filed "
                                         "under (default: live)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="routerbench: read a .pkl file. Reading a pickle "
                                      "runs any code it holds: only for a file from a source you trust."),
) -> None:
    """Import outcomes recorded by other tools, or herd serve's own traffic with its feedback, into
    herd's unified format, ready for `herd eval`.

    \b
    herd import lm-eval results/my-model/samples_gsm8k_*.jsonl -o runs/imported
    herd import long outcomes.csv -o runs/mine          # qid, model, correct, text[, cost_usd, ...]
    herd import routerbench routerbench_0shot.csv -o runs/routerbench   # .parquet; .pkl with --trust-pickle
    herd import routellm mmlu/responses/*.csv -o runs/routellm-mmlu
    herd import choice-log choices.jsonl --feedback feedback.jsonl -o runs/live
    """
    from herd import import_formats
    from herd.data import Outcomes

    files = [Path(p) for p in paths]
    missing = [str(p) for p in files + ([Path(feedback)] if feedback else []) if not p.is_file()]
    if missing:
        _fail(f"no such file(s): {missing}")
    try:
        frames, report = import_formats.read(kind, files, model=model, filter=filter_name, benchmark=benchmark,
                                             feedback=feedback, source=source, trust_pickle=trust_pickle)
    except HerdError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e.filename or paths[0]}: cannot be read ({e.strerror or e})")
    for line in report:
        console.print(line, markup=False, highlight=False)
    try:
        Outcomes(*frames).save(out)
    except OSError as e:
        _fail(f"{e.filename or out}: cannot write the imported tables there ({e.strerror or e})")
    queries, outcomes, pool = frames
    if import_formats.FORMATS[kind].live:
        console.print(f"wrote {len(outcomes)} outcomes of {outcomes['model'].nunique()} model(s) to "
                      f"{Path(out).resolve()}; next: herd eval {out} --off-policy", markup=False, highlight=False)
        return
    console.print(f"imported {len(outcomes)} outcomes: {len(queries)} questions x {len(pool)} models "
                  f"({', '.join(sorted(set(outcomes['benchmark'])))}) into {Path(out).resolve()}; next: herd eval {out}")
    costed = set(outcomes.loc[outcomes["cost_usd"].notna(), "model"]) if "cost_usd" in outcomes else set()
    unpriced = sorted(set(outcomes["model"]) - costed)
    if unpriced:
        err.print(f"note: no costs or prices for {', '.join(unpriced)}: herd eval shows their cost as n/a. Price them "
                  f"with `herd eval {out} --pool pool.yaml` (each model's price_in_per_mtok, price_out_per_mtok), or "
                  f"in {Path(out) / 'models.csv'} (the same columns, or params_b for open models)", markup=False,
                  highlight=False)


@app.command("select")
def select_cmd(
    data: Optional[str] = DataArg,
    data_opt: Optional[str] = DataOpt,
    k: int = typer.Option(..., "--k", min=1, help="Pool size to select."),
    source: Optional[list[str]] = typer.Option(None, "--source", metavar=NAMES, help="Source(s) to select on."),
    benchmark: Optional[list[str]] = typer.Option(None, "--benchmark", metavar=NAMES, help="Benchmark(s) to select on."),
    budget: Optional[float] = typer.Option(None, "--budget", help="USD per query the pool may cost, each query priced "
                                           "at the cheapest pool model that answers it right."),
    max_params: Optional[float] = typer.Option(None, "--max-params", help="Billions of parameters of open models to "
                                               "host, summed (models.csv params_b)."),
    must_include: Optional[list[str]] = typer.Option(None, "--must-include", metavar=NAMES, help="Models the pool must have."),
    tags: Optional[list[str]] = typer.Option(None, "--tags", metavar="TAG", help="'open': only open-weights models."),
    router: Optional[list[str]] = typer.Option(None, "--router", metavar="NAME", help="One router that re-scores each "
                                               "greedy pool under CV (default logistic)."),
    policy: str = typer.Option("safe", "--policy", metavar="SPEC", help="Policy for the re-scoring (tuned inside each training split)."),
    folds: int = typer.Option(5, "--folds", min=2),
    seed: int = SeedOpt,
    out: str = typer.Option("herd-select", "--out", "-o", metavar="DIR", help="Directory for select.json, report.html and the plot."),
    pool_file: Optional[str] = typer.Option(None, "--pool", metavar="FILE", help="A pool file naming every candidate model; with "
                                            "--write-pool, the chosen K are written as a pool file to serve."),
    write_pool: Optional[str] = typer.Option(None, "--write-pool", metavar="FILE", help="Where to write the pool file of the chosen K."),
    min_outcomes: int = MinOpt,
    size_prices: Optional[str] = SizeOpt,
) -> None:
    """Choose the K models that together answer the most (greedy on oracle coverage, checked
    against exhaustive search where small), then re-score each pool with a router under CV."""
    router = _one_router(router, "logistic")
    if (pool_file is None) != (write_pool is None):
        _fail("--pool and --write-pool go together: the full pool file to read and the chosen pool file to write")
    import json

    from rich.table import Table

    from herd import select
    from herd.policies import make_policy
    from herd.report import plot_pool_size, write_select_report
    from herd.routers import make_router

    tag_list = _split_list(tags) or []
    if set(tag_list) - {"open"}:
        _fail(f"--tags {sorted(set(tag_list) - {'open'})}: outcome data only knows 'open' (models.csv open_weights)")
    try:
        make_router(router, seed=seed)  # a wrong name or spec fails before the data loads
        chosen_policy = make_policy(_tagged_policies([policy], tags)[0])
        path, outcomes = _load_data(data or data_opt, _split_list(source), _split_list(benchmark), None,
                                    min_outcomes, size_prices)
        constraints = select.Constraints(budget, max_params, _split_list(must_include) or [], "open" in tag_list)
        with console.status("choosing pools and re-scoring each with the router under cross-validation"):
            selection = select.select_pool(outcomes, k, constraints, router=router, policy=chosen_policy,
                                           folds=folds, seed=seed)
    except HerdError as e:
        _fail(str(e))
    t = Table(title=f"greedy pool selection on {selection.n_queries} queries x {selection.n_models} models",
              title_justify="left", caption=select.CAPTION, caption_justify="left")
    for col in selection.columns():
        t.add_column(col, justify="left" if col == "adds" else "right")
    for row in selection.rows():
        t.add_row(*row)
    console.print(t)
    for line in selection.checks():
        console.print(line)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "select.json").write_text(json.dumps(selection.to_dict(), indent=2))
    plot = plot_pool_size(selection.steps, f"{router}+{selection.policy}", out_dir / "pool-size.png")
    page = write_select_report(selection, plot, out_dir / "report.html")
    console.print(f"wrote {out_dir / 'select.json'}, {page} and {plot}")
    if write_pool:
        from herd.pool import write_subset

        chosen = selection.chosen
        try:
            written = write_subset(pool_file, chosen, write_pool,
                                   f"herd select --k {k} on {path}: {', '.join(chosen)}")
        except HerdError as e:
            _fail(str(e))
        console.print(f"pool of {len(chosen)}: {written} (serve it with `herd serve {written}`)")


@app.command()
def spend(
    state: Optional[str] = typer.Option(None, "--state", help="Redis URL of the ledger, e.g. redis://127.0.0.1:6379/0 "
                                        "(default: HERD_STATE_URL, else the pool file's gateway.state)."),
    pool: Optional[str] = typer.Option(None, "--pool", help="Pool file whose gateway.state names the Redis."),
    choice_log: Optional[str] = typer.Option(None, "--choice-log", help="Without Redis: rebuild the ledger from this "
                                             "choice log (herd serve --choice-log)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
) -> None:
    """Print the spend ledger: USD, calls and tokens per client key, model and UTC day.

    \b
    herd spend --state redis://127.0.0.1:6379/0
    herd spend --choice-log choices.jsonl --json
    """
    import json
    import os

    from rich.table import Table

    from herd.gateway.spend import COLUMNS, ledger_from_choice_log, ledger_from_state
    from herd.gateway.state import ENV_STATE_URL

    try:
        url = state or os.environ.get(ENV_STATE_URL) or (_pool_settings(pool).state if pool else None)
        if url:
            rows = ledger_from_state(url)
        elif choice_log:
            rows = ledger_from_choice_log(choice_log)
        else:
            _fail(f"no ledger to read: give --state (or set {ENV_STATE_URL}), --pool with gateway.state, or --choice-log")
    except HerdError as e:
        _fail(str(e))
    if as_json:
        console.print_json(json.dumps(rows)) if console.is_terminal else print(json.dumps(rows))
        return
    table = Table(title="spend per key, model and day (UTC)")
    for c in COLUMNS:
        table.add_column(c, justify="right" if c not in ("key", "model", "day") else "left")
    for r in rows:
        table.add_row(r["key"], r["model"], r["day"], f"{r['usd']:.6f}", str(r["calls"]),
                      *("n/a" if r[c] is None else str(r[c]) for c in ("prompt_tokens", "completion_tokens")))
    console.print(table)
    console.print(f"total: ${sum(r['usd'] for r in rows):.6f} over {sum(r['calls'] for r in rows)} calls")


def _pool_settings(path: str):
    from herd.pool import load_pool

    return load_pool(path)[0].gateway


pool_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                       help="Pool files: make one from another tool's configuration.")
app.add_typer(pool_app, name="pool")


@pool_app.command("from-litellm")
def pool_from_litellm(
    config: str = typer.Argument(..., metavar="CONFIG", help="A LiteLLM proxy config (YAML with model_list)."),
    out: str = typer.Option(..., "--out", "-o", help="The pool file to write."),
) -> None:
    """Write a pool file from a LiteLLM config's model_list, and say what could not be mapped.

    \b
    herd pool from-litellm litellm_config.yaml -o pool.yaml
    """
    from herd import from_litellm

    try:
        pool, notes = from_litellm.convert(config)
        written = from_litellm.write(pool, notes, out, config)
    except HerdError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e.filename or out}: cannot write the pool file ({e.strerror or e})")
    priced = sum("price_in_per_mtok" in m for m in pool["models"])
    console.print(f"wrote {written}: {len(pool['models'])} model(s), {priced} with prices", markup=False)
    for note in notes:
        err.print(f"not mapped: {note}", markup=False, highlight=False)
    console.print("next: add 'router: DIR' from `herd train` (pool names must be the router's, or map them with "
                  "router_name), then `herd serve " + str(written) + "`", markup=False)


@app.command()
def routers() -> None:
    """List the routers herd can train."""
    from herd.routers import DESCRIPTIONS

    for name, text in DESCRIPTIONS.items():
        console.print(Text(name, style="bold") + f": {text}")


@app.callback(invoke_without_command=True)
def _version(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(__version__)
        raise typer.Exit()


def main() -> None:
    try:
        app()
    finally:
        _before_exit()


def _before_exit() -> None:
    """The command is done and its output written. Idle worker processes are ended now rather
    than waited for at exit, and the heap is set aside from the collections of the interpreter's
    teardown, which after a demo walked ~1 GB of objects: exit took ~1.6 s, now ~0.3 s."""
    import gc
    import sys

    if "herd.workers" in sys.modules:
        sys.modules["herd.workers"].stop()
    gc.freeze()


if __name__ == "__main__":
    main()
