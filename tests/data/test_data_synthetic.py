import re

import pytest

from icpo_core.data import synthetic
from icpo_core.grading.extract import last_boxed

EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def splits():
    return synthetic.generate_splits(synthetic.LEVELS, train=300, demo=150, eval=50, seed=7)


def test_sizes_and_unique_ids(splits):
    assert {k: len(v) for k, v in splits.items()} == {"train": 1200, "demo": 600, "eval": 200}
    ids = [p.id for rows in splits.values() for p in rows]
    assert len(ids) == len(set(ids))


def test_splits_never_share_a_problem(splits):
    texts = {split: {p.problem for p in rows} for split, rows in splits.items()}
    assert len(texts["train"]) == 1200 and len(texts["demo"]) == 600 and len(texts["eval"]) == 200
    assert not texts["train"] & texts["demo"]
    assert not texts["train"] & texts["eval"]
    assert not texts["demo"] & texts["eval"]


def test_solutions_are_worked_correct_and_boxed(splits):
    for p in (p for rows in splits.values() for p in rows):
        assert p.solution.endswith(f"The answer is \\boxed{{{p.answer}}}.")
        assert last_boxed(p.solution) == p.answer and p.answer.lstrip("-").isdigit()
        steps = EQUATION.findall(p.solution)
        assert len(steps) == (2 if p.level in (2, 3) else 1), p.solution
        for a, op, b, result in steps:
            assert eval(f"{a} {op} {b}") == int(result), p.solution  # noqa: S307 -- digits and one operator
        assert int(steps[-1][3]) == int(p.answer)
        assert int(p.answer) >= 0


def test_level_ranges(splits):
    for p in splits["train"]:
        numbers = [int(n) for n in re.findall(r"\d+", p.problem)]
        if p.level == 0:
            assert len(numbers) == 2 and all(1 <= n <= 9 for n in numbers)
            assert int(p.answer) == sum(numbers)
        if p.level == 1:
            assert all(n <= 20 for n in numbers) and int(p.answer) <= 20
        if p.level == 3:
            assert len(numbers) == 3 and "*" in p.solution


def test_deterministic_and_seeded():
    a = synthetic.generate_splits([1], train=20, demo=5, eval=5, seed=3)
    b = synthetic.generate_splits([1], train=20, demo=5, eval=5, seed=3)
    c = synthetic.generate_splits([1], train=20, demo=5, eval=5, seed=4)
    assert a == b
    assert [p.problem for p in a["train"]] != [p.problem for p in c["train"]]


def test_eval_split_does_not_move_when_train_grows():
    small = synthetic.generate_level(3, {"eval": 10, "demo": 5, "train": 5}, seed=0)
    big = synthetic.generate_level(3, {"eval": 10, "demo": 50, "train": 500}, seed=0)
    assert small["eval"] == big["eval"]


def test_varied_names_and_items(splits):
    names = {p.problem.split()[0] for p in splits["train"]}
    assert len(names) > 15


def test_unknown_level():
    with pytest.raises(ValueError, match="unknown synthetic level 7"):
        next(iter(synthetic.problem_stream(7, 0)))


# ------------------------------------------------------------------------------ disjoint-style demos
# A phrasing template is what is left of a question with its numbers and the items' names and objects masked.
_VOCAB = sorted(set(synthetic.NAMES) | {w for pair in synthetic.ITEMS for w in pair}, key=len, reverse=True)
_SLOTS = re.compile(r"\b(" + "|".join(map(re.escape, _VOCAB)) + r")\b")


def _words(text: str) -> list[str]:
    masked = _SLOTS.sub("_", re.sub(r"\d+", "#", text)).lower()
    return re.findall(r"[\w#$]+|[^\w\s]", masked)


def _phrases(text: str, n: int = 4) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


@pytest.fixture(scope="module")
def demos():
    return synthetic.generate_demos(synthetic.LEVELS, 150, seed=7)


def test_disjoint_demos_share_no_phrasing_template_with_any_item(splits, demos):
    items = splits["train"] + splits["eval"]
    assert len(demos) == 600 and len({d.problem for d in demos}) == 600
    item_templates = {" ".join(_words(p.problem)) for p in items}
    demo_templates = {" ".join(_words(d.problem)) for d in demos}
    assert len(item_templates) == 11 and len(demo_templates) == len(
        [t for ts in synthetic.DEMO_TEMPLATES.values() for t in ts]
    )
    assert not item_templates & demo_templates
    # stronger: not one 4-word phrase of a demo question occurs in any training or held-out question
    item_phrases = set().union(*(_phrases(p.problem) for p in items))
    for d in demos:
        assert not _phrases(d.problem) & item_phrases, d.problem
        assert not _SLOTS.search(d.problem), d.problem  # none of the items' names or objects


def test_disjoint_demos_are_correct_in_another_solution_style(demos):
    for d in demos:
        assert last_boxed(d.solution) == d.answer and int(d.answer) >= 0  # the answer format stays \boxed{}
        assert f"= \\boxed{{{d.answer}}}$" in d.solution and "The answer is" not in d.solution
        steps = re.findall(r"(\d+) (\+|-|\\times) (\d+) = (?:\\boxed\{)?(\d+)", d.solution)
        assert len(steps) == (2 if d.level in (2, 3) else 1), d.solution
        for a, op, b, result in steps:
            assert eval(f"{a} {op.replace(chr(92) + 'times', '*')} {b}") == int(result), d.solution  # noqa: S307
        assert int(steps[-1][3]) == int(d.answer)


def test_disjoint_demos_are_seeded_and_leave_the_items_alone(make_params):
    assert synthetic.generate_demos([1, 2], 30, seed=3) == synthetic.generate_demos([1, 2], 30, seed=3)
    assert synthetic.generate_demos([1], 30, seed=3) != synthetic.generate_demos([1], 30, seed=4)
    assert synthetic.generate_demos([2], 5, seed=3) == synthetic.generate_demos([2], 30, seed=3)[:5]
    disjoint = synthetic.splits_for(make_params({"data": {"synthetic": {"demo_style": "disjoint"}}}))
    same = synthetic.splits_for(make_params({"data": {"synthetic": {"demo_style": "same"}}}))
    assert disjoint["train"] == same["train"] and disjoint["eval"] == same["eval"]
    assert {d.problem for d in disjoint["demo"]}.isdisjoint(d.problem for d in same["demo"])
