"""Answer extraction and grading: pure functions from a model's text to an answer, and from an
answer and the gold one to right or wrong.

Extraction follows what lm-evaluation-harness's filters do for these tasks: an explicit
final-answer marker first (GSM8K's ``####``, "The answer is", ``\\boxed{}``), then a fallback
(the last number; the last standalone choice letter). ``None`` means no answer was found,
which grades as wrong, never as a failed call.
"""

from __future__ import annotations

import ast
import math
import re
import string
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Optional

from herd.errors import UsageError

_NUMBER = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+"
_MARKERS = (r"####\s*", r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*")


def _boxed(text: str) -> Optional[str]:
    """The contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        rest = text[start:].split(None, 1)  # \boxed 5
        return rest[1].split("$")[0].strip() if len(rest) > 1 else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def canonical_number(text: str) -> Optional[str]:
    """'1,234.50' -> '1234.5', '$18' -> '18', '3/4' -> '0.75', '-0' -> '0'; None if not a number."""
    t = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    t = re.sub(r"(?<=\d)(?:%|[a-zA-Z]+)$", "", t)  # trailing units: 18%, 30cm
    try:
        value = Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return repr(float(value))


def extract_number(text: str) -> Optional[str]:
    """The final numeric answer: after '####', 'The answer is', or in \\boxed{}; else the last number."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed is not None and (n := _first_number(boxed)) is not None:
        return n
    for marker in _MARKERS:
        found = re.findall(marker + f"({_NUMBER})", text, flags=re.IGNORECASE)
        if found:
            return canonical_number(found[-1])
    numbers = re.findall(_NUMBER, text)
    return canonical_number(numbers[-1]) if numbers else None


def _first_number(text: str) -> Optional[str]:
    m = re.search(_NUMBER, text)
    return canonical_number(m.group(0)) if m else None


def same_number(answer: Optional[str], gold: str) -> bool:
    if answer is None:
        return False
    a, g = canonical_number(answer), canonical_number(gold)
    if a is None or g is None:
        return False
    return math.isclose(float(Fraction(a)), float(Fraction(g)), rel_tol=1e-6, abs_tol=1e-9)


def gsm8k_gold(answer: str) -> str:
    """GSM8K's reference solution ends with '#### <number>'."""
    return canonical_number(answer.rsplit("####", 1)[-1]) or answer.strip()


def extract_choice(text: str, letters: str = "ABCDEFGHIJ") -> Optional[str]:
    """A multiple-choice letter: 'answer is (B)', 'Answer: B', \\boxed{B}; else the last
    standalone letter in parentheses or on its own."""
    if not text:
        return None
    cls = f"[{letters}]"
    boxed = _boxed(text)
    if boxed is not None and (m := re.fullmatch(rf"\s*\(?({cls})\)?\s*", boxed.replace("\\text{", "").replace("}", ""))):
        return m.group(1)
    # 'answer' in any case, the letter in capitals only: 'the answer is a bit...' names no option.
    # '(c)' counts in either case.
    after_marker = [m for m in re.finditer(rf"(?i:answer)\s*(?:is|:)?\s*:?\s*(?:\(([{letters}{letters.lower()}])\)|\**({cls})\b)",
                                           text) if not _english_word(text, m)]
    if after_marker:
        m = after_marker[-1]
        return (m.group(1) or m.group(2)).upper()
    found = re.findall(rf"\(({cls})\)", text)
    if found:
        return found[-1]
    found = re.findall(rf"(?:^|\s)({cls})[.):]?\s*$", text.strip(), flags=re.MULTILINE)
    return found[-1] if found else None


def _english_word(text: str, m: re.Match) -> bool:
    """'Answer: I think...': the capital I is the pronoun, not option I."""
    return m.group(2) == "I" and re.match(r"\s+[a-z]", text[m.end():]) is not None


def normalize_text(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    t = text.lower()
    t = "".join(c for c in t if c not in set(string.punctuation))
    t = re.sub(r"\b(a|an|the)\b", " ", t)
    return " ".join(t.split())


def extract_final_line(text: str) -> Optional[str]:
    """A free-text answer: after 'The answer is', else the last non-empty line."""
    if not text or not text.strip():
        return None
    found = re.findall(r"answer\s*(?:is|:)\s*:?\s*(.+)", text, flags=re.IGNORECASE)
    if found:
        return found[-1].strip().rstrip(".")
    return text.strip().splitlines()[-1].strip()


def _literal(text: str):
    try:
        with warnings.catch_warnings():  # answers such as '0123' warn before they fail
            warnings.simplefilter("ignore")
            return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text.strip().strip("'\"")


def extract_literal(text: str) -> Optional[str]:
    """A Python value: the contents of a ``` block or after 'answer is'/'==' , else the last line."""
    if not text or not text.strip():
        return None
    block = re.findall(r"```(?:python)?\s*\n?(.*?)```", text, flags=re.DOTALL)
    if block:
        text = block[-1]
    m = re.findall(r"(?:answer\s*(?:is|:)|==)\s*(.+)", text, flags=re.IGNORECASE)
    if m:
        return m[-1].strip().rstrip(".")
    return text.strip().splitlines()[-1].strip()


def same_literal(answer: Optional[str], gold: str) -> bool:
    if answer is None:
        return False
    return _literal(answer) == _literal(gold)


_LATEX_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "^\\circ", "^{\\circ}", "\\%", "%", "\\$", "$")


def normalize_latex(text: str) -> str:
    """Enough LaTeX normalization for MATH-style answers to compare equal when they are."""
    t = _boxed(text) if "\\boxed" in text or "\\fbox" in text else text
    t = (t or "").strip()
    t = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", t)
    t = re.sub(r"\\(?:mbox|mathrm|textbf)\{\s*([^}]*)\}", r"\1", t)
    for token in _LATEX_DROP:
        t = t.replace(token, "")
    t = t.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\le", "\\leq").replace("\\leqq", "\\leq")
    t = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", t)  # \frac12
    t = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", t)
    t = re.sub(r"^\s*[a-zA-Z]\s*=\s*", "", t)  # x = 5
    t = re.sub(r"\s*(?:units?|degrees?|cm|inches|dollars|meters)\s*$", "", t)
    t = t.replace(" ", "").rstrip(".")
    t = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", t)
    if re.fullmatch(r"\.\d+", t):
        t = "0" + t
    return t


def _latex_value(t: str) -> Optional[float]:
    """The value of a plain number or a numeric \\frac; anything else (5x, 2i, 1,2) is not a number."""
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", t)
    if m:
        return (-1 if m.group(1) else 1) * int(m.group(2)) / int(m.group(3)) if int(m.group(3)) else None
    if re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?", t):
        return float(Fraction(t)) if not t.endswith("/0") else None
    return None


def extract_math(text: str) -> Optional[str]:
    """A MATH-style answer: the last \\boxed{}, else after 'The answer is', else the last $...$."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    found = re.findall(r"answer\s*(?:is|:)\s*:?\s*\$?([^$\n]+?)\$?\s*\.?\s*$", text, flags=re.IGNORECASE | re.MULTILINE)
    if found:
        return found[-1]
    found = re.findall(r"\$([^$]+)\$", text)
    return found[-1] if found else None


def same_math(answer: Optional[str], gold: str) -> bool:
    if answer is None:
        return False
    a, g = normalize_latex(answer), normalize_latex(gold)
    if a == g:
        return True
    va, vg = _latex_value(a), _latex_value(g)
    return va is not None and vg is not None and math.isclose(va, vg, rel_tol=1e-6, abs_tol=1e-9)


def number_key(answer: str) -> Optional[str]:
    """'18', '18.00', '$18' and '18%' share one key: the number as the grader compares it; an
    answer that is no number keys as its text."""
    return canonical_number(answer) or answer.strip() or None


def math_key(answer: str) -> Optional[str]:
    """LaTeX normalized; a plain number or numeric fraction by its value ('\\frac{1}{2}' = '0.5')."""
    t = normalize_latex(answer)
    if not t:
        return None
    value = _latex_value(t)
    return t if value is None else repr(round(value, 9) + 0.0)


def _canonical(value) -> str:
    """A Python value written so that equal values are written alike (dicts and sets sorted)."""
    if isinstance(value, dict):
        items = sorted((_canonical(k), _canonical(v)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(_canonical(v) for v in value)) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_canonical(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value + 0.0) if math.isfinite(value) else repr(value)
    return repr(value)


def literal_key(answer: str) -> Optional[str]:
    return _canonical(_literal(answer))


@dataclass(frozen=True)
class Grader:
    """How a task's answers are read and graded. ``key`` maps an extracted answer to a canonical
    form: two answers with one key grade alike (what votes and agreement compare)."""

    name: str
    extract: Callable[[str], Optional[str]]
    correct: Callable[[Optional[str], str], bool]
    description: str
    key: Callable[[str], Optional[str]] = lambda a: a.strip() or None

    def keyed(self, answer: Optional[str]) -> Optional[str]:
        """``key``, or the stripped text where the answer defeats it (a 400-digit number)."""
        if answer is None or not str(answer).strip():
            return None
        try:
            return self.key(str(answer))
        except (ValueError, OverflowError, ZeroDivisionError, RecursionError, MemoryError):
            return str(answer).strip()


GRADERS = {
    "number": Grader("number", extract_number, same_number, "final number (GSM8K style)", number_key),
    "choice": Grader("choice", extract_choice, lambda a, g: a is not None and a.upper() == g.strip().strip("()").upper(),
                     "multiple-choice letter A-J", lambda a: a.strip().strip("()").strip().upper() or None),
    "exact": Grader("exact", lambda t: t.strip() if t and t.strip() else None,
                    lambda a, g: a is not None and a == g.strip(), "the whole answer, exactly"),
    "string": Grader("string", extract_final_line,
                     lambda a, g: a is not None and normalize_text(a) == normalize_text(g),
                     "final line, normalized (case, punctuation, articles)",
                     lambda a: normalize_text(a) or a.strip().lower() or None),
    "literal": Grader("literal", extract_literal, same_literal, "Python literal (CRUXEval style)", literal_key),
    "math": Grader("math", extract_math, same_math, "LaTeX-normalized expression or equal number (MATH style)",
                   math_key),
}

# Benchmarks of the shipped outcome data and the grader their answers need.
GRADER_BY_BENCHMARK = {"gsm8k": "number", "mgsm": "number", "math": "math", "math-l5": "math", "crux": "literal",
                       "mmlu-pro": "choice", "mmlu": "choice", "arc-challenge": "choice", "arc": "choice",
                       "winogrande": "choice", "commonsense-qa": "choice", "openbook-qa": "choice"}


def get_grader(name: str) -> Grader:
    try:
        return GRADERS[name]
    except KeyError:
        raise UsageError(f"unknown grader {name!r}; choose from {sorted(GRADERS)}") from None


def _answer_groups(answers: list[Optional[str]], same: Callable[[Optional[str], str], bool]) -> list[list[str]]:
    """Extracted answers grouped by grading equal, in order of first appearance; None left out."""
    groups: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if same(a, g[0]):
                g.append(a)
                break
        else:
            groups.append([a])
    return groups


def majority(answers: list[Optional[str]], same: Callable[[Optional[str], str], bool]) -> Optional[str]:
    """The most common extracted answer (answers that grade equal count together); ties go to
    the one seen first; no answers -> None."""
    groups = _answer_groups(answers, same)
    return max(groups, key=len)[0] if groups else None


def agreement(answers: list[Optional[str]], same: Callable[[Optional[str], str], bool]) -> float:
    """Share of the samples that give the majority answer (a sample with no answer agrees with
    none): self-consistency, the signal a cascade checks before it accepts an answer."""
    groups = _answer_groups(answers, same)
    return max(map(len, groups)) / len(answers) if groups else 0.0


def infer_grader(benchmark: str, answers) -> str:
    """The grader for a benchmark's recorded answers: by its name where herd knows it, else from
    the answers themselves (letters A-J: choice; numbers: number; otherwise normalized text)."""
    known = GRADER_BY_BENCHMARK.get(benchmark.lower()) or GRADER_BY_BENCHMARK.get(benchmark.lower().rsplit("-", 1)[-1])
    if known:
        return known
    seen = [str(a).strip() for a in answers if a is not None and a == a and str(a).strip()][:5000]
    if not seen:
        return "string"
    if all(re.fullmatch(r"\(?[A-J]\)?", a) for a in seen):
        return "choice"
    if sum(canonical_number(a) is not None for a in seen) >= 0.9 * len(seen):
        return "number"
    return "string"


def answer_codes(answers, grader: str):
    """(n_queries, n_models) int codes of recorded answers: equal codes where the grader's keys
    are equal, -1 where a model gave no answer. Votes and agreement compare these."""
    import numpy as np
    import pandas as pd

    answers = np.asarray(answers, dtype=object)
    flat = pd.Series(answers.ravel())
    raw, uniques = pd.factorize(flat, use_na_sentinel=True)
    keyed = get_grader(grader).keyed
    keys = pd.Series([keyed(u) for u in uniques], dtype=object)
    key_codes, _ = pd.factorize(keys, use_na_sentinel=True)
    codes = np.where(raw >= 0, key_codes[np.maximum(raw, 0)] if len(key_codes) else -1, -1)
    return codes.reshape(answers.shape).astype(np.int32)
