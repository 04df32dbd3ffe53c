"""Prompts as in SelectLLM: zero-shot chain of thought (ZCoT) for chat models, few-shot chain of
thought (FCoT) for base models through the completions endpoint. Templates are text files with
``{question}``-style fields; a directory of files with the same names overrides any of them."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from herd.collect.tasks import Item, Task, TaskError
from herd.jsonl import read_text

TEMPLATES = Path(__file__).parent / "templates"
FILES = ("zcot.txt", "fcot_example.txt", "fcot_query.txt")
ANSWER_FORMATS = {"number": "The answer is <number>", "choice": "The answer is (<letter>)",
                  "math": "The answer is \\boxed{<answer>}", "literal": "The answer is <Python literal>",
                  "string": "The answer is <answer>", "exact": "The answer is <answer>"}
# A base model continues the pattern; this ends its answer where the next question would start.
COMPLETION_STOP = ["\nQuestion:", "\n\nQuestion"]


@dataclass(frozen=True)
class Prompts:
    zcot: str
    example: str
    query: str
    shots: int = 5
    seed: int = 0

    @classmethod
    def load(cls, templates: str | Path | None = None, shots: int = 5, seed: int = 0) -> Prompts:
        texts = {}
        for name in FILES:
            own = Path(templates) / name if templates else None
            path = own if own is not None and own.exists() else TEMPLATES / name
            texts[name] = read_text(path, TaskError, "prompt template")
        if templates and not any((Path(templates) / n).exists() for n in FILES):
            raise TaskError(f"{templates}: none of {list(FILES)} there to override the prompts")
        for name, field in (("zcot.txt", "{question}"), ("fcot_query.txt", "{question}")):
            if field not in texts[name]:
                raise TaskError(f"template {name} must contain {field}")
        for name, text in texts.items():  # fail now, not at the first call: literal braces must be doubled
            try:
                text.format(question="q", answer_format="a", solution="s")
            except (KeyError, IndexError, ValueError) as e:
                raise TaskError(f"template {name}: {type(e).__name__} {e}; the fields are {{question}}, "
                                "{answer_format} and {solution}; write other braces as {{ and }}") from None
        return cls(texts["zcot.txt"], texts["fcot_example.txt"], texts["fcot_query.txt"], shots, seed)

    def fingerprint(self) -> str:
        h = hashlib.sha256("\x1f".join([self.zcot, self.example, self.query, str(self.shots), str(self.seed)]).encode())
        return h.hexdigest()[:12]

    def exemplars(self, task: Task) -> list[Item]:
        """``shots`` examples drawn with ``seed`` from the task's example pool (never asked)."""
        pool = sorted(task.exemplars, key=lambda i: i.id)
        return random.Random(self.seed).sample(pool, min(self.shots, len(pool)))

    def chat(self, task: Task, item: Item) -> list[dict]:
        text = self.zcot.format(question=item.question, answer_format=ANSWER_FORMATS[task.grader])
        return [{"role": "user", "content": text.strip()}]

    def completion(self, task: Task, item: Item, exemplars: list[Item]) -> str:
        shots = "".join(self.example.format(question=e.question, solution=e.solution or _plain(task, e))
                        for e in exemplars)
        return shots + self.query.format(question=item.question)


def _plain(task: Task, item: Item) -> str:
    answer = f"({item.answer})" if task.grader == "choice" else item.answer
    return f"The answer is {answer}."
