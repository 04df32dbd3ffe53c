"""Answer extraction and grading on hand-written generations, the way models really write them."""

from __future__ import annotations

import pytest

from herd.collect.grading import (GRADERS, agreement, canonical_number, extract_choice, extract_math, extract_number, get_grader, gsm8k_gold, majority, normalize_latex,
                                  same_math, same_number)


@pytest.mark.parametrize("text, expected", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("The answer is 42.", "42"),
    ("So the final answer is: -7", "-7"),
    ("Answer: 3.50", "3.5"),
    ("The total is $1,250.00.", "1250"),
    ("Therefore, the answer is \\boxed{72}.", "72"),
    ("We get \\boxed{\\$ 5}", "5"),
    ("First 3 apples, then 4 more, so 7 apples in all.", "7"),
    ("It costs 30cm", "30"),
    ("The share is 3/4", "0.75"),
    ("the value is -0.5 and that is it", "-0.5"),
    ("The answer is 18 dollars. Check: 9 * 2 = 18, 3 + 4 = 7", "18"),
    ("He ran 10 miles on Monday and 12 on Tuesday; the answer is 22\n\nQuestion: next one 99", "22"),
    ("no numbers here", None),
    ("", None),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


@pytest.mark.parametrize("answer, gold, right", [
    ("18", "18", True), ("18.0", "18", True), ("1,000", "1000", True), ("$5", "5", True),
    ("0.5", "1/2", True), ("17", "18", False), (None, "18", False), ("abc", "18", False), ("-3", "3", False),
])
def test_same_number(answer, gold, right):
    assert same_number(answer, gold) is right


def test_gsm8k_gold_and_canonical_numbers():
    assert gsm8k_gold("Janet sells 9 eggs.\nShe makes $18.\n#### 18") == "18"
    assert gsm8k_gold("#### 1,600") == "1600"
    assert canonical_number("-0") == "0" and canonical_number("12%") == "12" and canonical_number("x") is None


@pytest.mark.parametrize("text, expected", [
    ("The answer is (B).", "B"),
    ("Answer: C", "C"),
    ("answer is D because ...", "D"),
    ("After ruling out (A) and (C), the correct option is (E)", "E"),
    ("Let's think. ... \\boxed{F}", "F"),
    ("The best choice:\nG", "G"),
    ("**Answer: H**", "H"),
    ("I am not sure.", None),
    ("A is wrong and so is B. So the answer is J.", "J"),
    ("Answer: I think it is (B).", "B"),
    ("The answer is a bit subtle, but I pick (D).", "D"),
    ("The answer is A because the others fail.", "A"),
])
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_choice_grader_accepts_parenthesised_gold():
    g = GRADERS["choice"]
    assert g.correct(g.extract("The answer is (c)"), "(C)") and not g.correct(None, "C")


@pytest.mark.parametrize("text, gold, right", [
    ("```python\n[1, 2, 3]\n```", "[1,2,3]", True),
    ("The answer is 'abc'", "abc", True),
    ("assert f('x') == {'a': 1}", "{'a': 1}", True),
    ("(1, 2)", "(1, 2)", True),
    ("[1, 2]", "[2, 1]", False),
    ("True", "'True'", False),  # a bool is not the string 'True'
    ("", "x", False),
])
def test_literal_grader(text, gold, right):
    g = GRADERS["literal"]
    assert g.correct(g.extract(text), gold) is right


@pytest.mark.parametrize("text, expected", [
    ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("The answer is $\\sqrt{3}$.", "\\sqrt{3}"),
    ("The roots are $2$ and $3$", "3"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("nothing to see", None),
])
def test_extract_math(text, expected):
    assert extract_math(text) == expected


@pytest.mark.parametrize("answer, gold, right", [
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("x = 5", "5", True),
    ("10\\%", "10", True),
    ("90^\\circ", "90", True),
    ("\\text{(C)}", "(C)", True),
    ("1,000", "1000", True),
    ("\\frac{1}{3}", "\\frac{1}{2}", False),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    ("5x", "5", False),
    ("2i", "2", False),
    ("1,2", "12", False),
    ("-0.5", "-\\frac{1}{2}", True),
    (None, "1", False),
])
def test_same_math(answer, gold, right):
    assert same_math(answer, gold) is right


def test_normalize_latex_units_and_text():
    assert normalize_latex("\\text{5 units}") == "5"
    assert normalize_latex("$\\$ 4.50$") == "4.50"


@pytest.mark.parametrize("grader, text, gold, right", [
    ("exact", " Paris ", "Paris", True),
    ("exact", "paris", "Paris", False),
    ("string", "The answer is: The Eiffel Tower.", "eiffel tower", True),
    ("string", "Reasoning...\nLondon", "Paris", False),
])
def test_exact_and_string_graders(grader, text, gold, right):
    g = get_grader(grader)
    assert g.correct(g.extract(text), gold) is right


def test_majority_groups_equal_answers_and_ignores_missing():
    assert majority(["18", "18.0", "17", None, None], same_number) == "18"
    assert majority([None, None], same_number) is None
    assert majority(["3", "4"], same_number) == "3"  # a tie goes to the first seen


def test_agreement_is_the_majority_share_of_all_samples():
    assert agreement(["18", "18.0", "17", None], same_number) == 0.5  # a sample with no answer agrees with none
    assert agreement(["7", "7", "7"], same_number) == 1.0
    assert agreement([None, None], same_number) == 0.0


def test_unknown_grader_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown grader 'fuzzy'; choose from"):
        get_grader("fuzzy")
