"""Tasks to collect outcomes on: questions with gold answers, a grader, and a pool of worked
examples for few-shot prompts that never overlaps the questions being asked."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from herd.collect.grading import GRADER_BY_BENCHMARK, get_grader, gsm8k_gold
from herd.errors import HerdError
from herd.jsonl import read_jsonl


class TaskError(HerdError, ValueError):
    """A task that cannot be built; the message says which file or name and why."""


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    answer: str  # the gold answer, as the grader compares it
    solution: str = ""  # a worked solution, where the task has one (few-shot examples use it)


@dataclass
class Task:
    name: str
    source: str
    benchmark: str
    grader: str
    items: list[Item]  # the questions to ask
    exemplars: list[Item] = field(default_factory=list)  # few-shot candidates, disjoint from items

    def __post_init__(self):
        get_grader(self.grader)
        asked = {i.id for i in self.items}
        if any(e.id in asked for e in self.exemplars):
            raise TaskError(f"task {self.name}: few-shot examples overlap the questions asked")


def load_task(spec: str, *, data_dir: Path | None = None, split: str = "test", limit: int | None = None,
              grader: str | None = None, offset: int = 0) -> Task:
    """``gsm8k`` (the shipped GSM8K files), ``SOURCE/BENCHMARK`` of an outcome dataset with gold
    answers, or a JSONL file of ``{"id", "question", "answer"}``; the first ``limit`` questions
    after ``offset``."""
    path = Path(spec)
    if spec.endswith(".jsonl") or path.is_file():
        task = _jsonl_task(path, grader or "string")
    elif spec == "gsm8k":
        task = _gsm8k(data_dir, split)
    elif "/" in spec:
        task = _outcome_task(spec, data_dir, grader)
    else:
        raise TaskError(f"unknown task {spec!r}: give 'gsm8k', SOURCE/BENCHMARK of an outcome dataset "
                        "(e.g. zeroeval/math-l5) or a .jsonl file of {\"id\", \"question\", \"answer\"}")
    if grader:
        task.grader = grader
        get_grader(grader)
    end = None if limit is None else offset + limit
    asked, rest = task.items[offset:end], task.items[:offset] + (task.items[end:] if end is not None else [])
    if not asked:
        raise TaskError(f"task {task.name}: no questions left after --offset {offset} / --limit {limit}")
    # A task without a separate train split draws its examples from the questions not asked.
    exemplars = task.exemplars or rest
    return Task(task.name, task.source, task.benchmark, task.grader, asked, exemplars)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = read_jsonl(path, TaskError)
    for n, row in rows:
        if not isinstance(row, dict):
            raise TaskError(f"{path}, line {n}: expected an object")
    return rows


def _jsonl_task(path: Path, grader: str) -> Task:
    items, seen = [], set()
    for n, row in _read_jsonl(path):
        missing = [k for k in ("question", "answer") if not isinstance(row.get(k), (str, int, float)) or row.get(k) == ""]
        if missing:
            raise TaskError(f"{path}, line {n}: needs {missing} (a question and its gold answer)")
        qid = str(row.get("id", f"line-{n}"))
        if qid in seen:
            raise TaskError(f"{path}, line {n}: id {qid!r} appears twice")
        seen.add(qid)
        question = str(row["question"])
        if isinstance(row.get("choices"), list):
            question += "\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(row["choices"]))
        items.append(Item(qid, question, str(row["answer"]), str(row.get("solution", ""))))
    if not items:
        raise TaskError(f"{path}: no questions")
    return Task(path.stem, "herd", path.stem.lower(), grader, items)


def _gsm8k(data_dir: Path | None, split: str) -> Task:
    from herd.data import find_data_dir

    if split not in ("test", "train"):
        raise TaskError(f"gsm8k has splits 'test' and 'train', not {split!r}")
    root = find_data_dir(data_dir)

    def read(which: str) -> list[Item]:
        path = root / f"gsm8k_{which}.jsonl"
        if not path.exists():
            raise TaskError(f"{path}: missing; the gsm8k task reads gsm8k_test.jsonl and gsm8k_train.jsonl there")
        return [Item(f"{which}-{i}", row["question"], gsm8k_gold(row["answer"]), _solution(row["answer"]))
                for i, (_, row) in enumerate(_read_jsonl(path))]

    # Examples come from the train split; asking the train split draws them from the test split.
    return Task("gsm8k", "herd", "gsm8k", "number", read(split), read("train" if split == "test" else "test"))


def _solution(answer: str) -> str:
    """GSM8K's worked solution without its calculator annotations, ending 'The answer is N.'"""
    body, _, final = answer.rpartition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe answer is {final.strip()}."


def _outcome_task(spec: str, data_dir: Path | None, grader: str | None) -> Task:
    from herd.data import find_data_dir

    source, _, benchmark = spec.partition("/")
    root = find_data_dir(data_dir)
    path = root / "queries.parquet"
    if not path.exists():
        raise TaskError(f"{root}: no queries.parquet to take {spec} from")
    q = pd.read_parquet(path)
    rows = q[(q["source"] == source) & (q["benchmark"] == benchmark)]
    if rows.empty:
        groups = sorted(set(q["source"] + "/" + q["benchmark"]))
        raise TaskError(f"no questions for {spec} in {path}; there are: {groups}")
    rows = rows[rows["gold"].notna() & (rows["gold"].astype(str) != "")]
    if rows.empty:
        raise TaskError(f"{spec} in {path} has no gold answers, so its answers cannot be graded")
    grader = grader or GRADER_BY_BENCHMARK.get(benchmark)
    if grader is None:
        raise TaskError(f"no default grader for benchmark {benchmark!r}; pass --grader")
    items = [Item(str(r.qid), str(r.text), _gold(str(r.gold), grader)) for r in rows.itertuples()]
    return Task(spec, source, benchmark, grader, items)


def _gold(gold: str, grader: str) -> str:
    """A gold answer as its grader compares it: some sources keep GSM8K's whole solution."""
    return gsm8k_gold(gold) if grader == "number" and "####" in gold else gold
