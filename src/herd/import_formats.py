"""The formats `herd import` reads: each name maps to a reader and a line of help. Adding an
importer means writing its reader (in ``importers`` or a module of its own) and one entry here.

This module stays light (no pandas) so the CLI can list the formats in its help; each reader
imports what it needs when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from herd.errors import ImportFileError


@dataclass(frozen=True)
class Format:
    """``read(files, **options)`` returns the unified tables (queries, outcomes, models) and the
    lines to report of what was kept; ``options`` are the keyword options it takes (named as the
    CLI's flags, '-' read as '_'), ``required`` those it cannot do without. ``one_file``: it reads
    exactly one file. ``live``: the result is live traffic, evaluated off-policy."""

    help: str
    read: Callable[..., tuple[tuple, list[str]]]
    options: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    one_file: bool = False
    usage: str = ""
    live: bool = False


def _lm_eval(files, model=None, filter=None):  # noqa: A002 (the CLI's --filter)
    from herd import importers

    return importers.lm_eval(files, model, filter), []


def _long(files, benchmark=None):
    from herd import importers

    return importers.long_table(files[0], benchmark), []


def _routerbench(files, trust_pickle=False):
    from herd import importers

    return importers.routerbench(files[0], trust_pickle), []


def _routellm(files):
    from herd import importers

    return importers.routellm(files), []


def _choice_log(files, feedback, source=None, benchmark=None):
    from herd import choicelog

    frames, report = choicelog.join(files[0], feedback, source=source or choicelog.SOURCE,
                                    benchmark=benchmark or choicelog.BENCHMARK)
    return frames, report.lines()


FORMATS: dict[str, Format] = {
    "lm-eval": Format("lm-evaluation-harness --log_samples files (samples_<task>_<date>.jsonl)", _lm_eval,
                      options=("model", "filter")),
    "long": Format("one CSV/JSONL row per (question, model): qid, model, correct, text[, cost_usd, ...]", _long,
                   options=("benchmark",), one_file=True),
    "routerbench": Format("RouterBench's wide table (CSV, parquet; its .pkl with --trust-pickle)", _routerbench,
                          options=("trust_pickle",), one_file=True),
    "routellm": Format("RouteLLM's per-benchmark response CSVs", _routellm),
    "choice-log": Format("herd serve's choice log joined with its feedback log", _choice_log,
                         options=("feedback", "source", "benchmark"), required=("feedback",), one_file=True,
                         usage="choice-log takes one choice log and --feedback FILE: herd import choice-log "
                               "choices.jsonl --feedback feedback.jsonl -o DIR", live=True),
}


def read(kind: str, files: list[Path], **options) -> tuple[tuple, list[str]]:
    """Read ``files`` as format ``kind`` with the options given (None or False: not given).
    Raises ImportFileError for an unknown format, a wrong number of files, or an option the
    format does not take, naming it."""
    fmt = FORMATS.get(kind)
    if fmt is None:
        raise ImportFileError(f"unknown format {kind!r}; choose from {sorted(FORMATS)}")
    given = {k: v for k, v in options.items() if v not in (None, False)}
    if (fmt.one_file and len(files) != 1) or any(k not in given for k in fmt.required):
        raise ImportFileError(fmt.usage or f"{kind} takes one file")
    extra = sorted(k for k in given if k not in fmt.options)
    if extra:
        takers = {k: sorted(n for n, f in FORMATS.items() if k in f.options) for k in extra}
        raise ImportFileError("; ".join(f"--{k.replace('_', '-')} is for {' and '.join(takers[k])}, not {kind}"
                                        for k in extra))
    return fmt.read(files, **given)
