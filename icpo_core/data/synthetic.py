"""Seeded arithmetic word problems with exact integer answers and worked solutions (the offline data set).

Levels (research on the offline model: SmolLM2-135M gets 0 % zero-shot and 16-69 % with one demo on these):

- 0: ``a + b``, single digits                        ("Tom has 7 marbles. He gets 6 more marbles. ...")
- 1: ``a + b`` or ``a - b``, numbers and result <= 20
- 2: ``a + b - c``, two steps, numbers <= 30
- 3: ``a * b + c`` or ``a * b - c``                  ("Mia has 5 boxes with 9 cookies in each box ...")

Every solution ends with ``The answer is \\boxed{N}.``. :func:`generate_splits` draws, per level, one stream of
distinct problem texts and cuts it into eval, demo and train splits, so the splits never share a problem text,
and the eval split depends only on (seed, level, eval size): growing the train split never changes the benchmark.

The demo cache (``data.synthetic.demo_style``) is either that ``same``-style demo split, or (``disjoint``, the
default) :func:`generate_demos`: problems of the same levels from ANOTHER distribution, as the paper's MATH demos
differ from its OpenR1 training problems. Disjoint demos share no phrasing template, no name and no object with
the training and held-out items (textbook prompts such as "Compute $7 + 6$." and word problems about lengths,
temperatures, passengers, seats), and their worked solutions are terse LaTeX in MATH's style
(``Adding, $7 + 6 = \\boxed{13}$.``) instead of a sentence with units and a closing ``The answer is ...``
line. The answer format, a ``\\boxed{}`` integer, is the same. The training and held-out splits do not depend on
the demo style (the same-style demo split is still cut from the stream, unused).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from icpo_core.config import Params

LEVELS = (0, 1, 2, 3)
SPLITS = ("eval", "demo", "train")

NAMES = (
    "Tom", "Amy", "Leo", "Mia", "Sam", "Zoe", "Ben", "Eva", "Max", "Lily", "Omar", "Nina", "Ivan", "Sara",
    "Raj", "Yuki", "Carlos", "Hana", "Felix", "Grace", "Jonas", "Aisha", "Pedro", "Chloe", "Ravi", "Emma",
    "Kofi", "Lena", "Theo", "Maya",
)  # fmt: skip
# (plural item, container) pairs; the container is used by level 3.
ITEMS = (
    ("apples", "bags"), ("marbles", "jars"), ("stickers", "sheets"), ("pencils", "boxes"),
    ("cookies", "boxes"), ("books", "shelves"), ("stamps", "albums"), ("shells", "buckets"),
    ("cards", "packs"), ("balloons", "bundles"), ("eggs", "cartons"), ("flowers", "vases"),
    ("coins", "purses"), ("crayons", "boxes"), ("oranges", "baskets"), ("beads", "strings"),
    ("toy cars", "bins"), ("candies", "bags"), ("buttons", "tins"), ("leaves", "piles"),
)  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """One synthetic problem. ``id`` is unique over levels and splits; ``answer`` is the integer as text."""

    id: str
    level: int
    split: str
    problem: str
    solution: str
    answer: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _boxed(n: int) -> str:
    return f"The answer is \\boxed{{{n}}}."


def _level0(rng: random.Random) -> tuple[str, str, int]:
    name, (item, _) = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    text = rng.choice(
        (
            f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?",
            f"{name} picks {a} {item} in the morning and {b} {item} in the afternoon. "
            f"How many {item} does {name} pick in total?",
            f"There are {a} {item} on a table. {name} puts {b} more {item} on the table. "
            f"How many {item} are on the table now?",
        )
    )
    return text, f"{a} + {b} = {a + b}, so the total is {a + b} {item}.", a + b


def _level1(rng: random.Random) -> tuple[str, str, int]:
    name, (item, _) = rng.choice(NAMES), rng.choice(ITEMS)
    if rng.random() < 0.5:
        a = rng.randint(1, 19)
        b = rng.randint(1, 20 - a)
        text = rng.choice(
            (
                f"{name} has {a} {item}. A friend gives {name} {b} more {item}. "
                f"How many {item} does {name} have now?",
                f"{name} collected {a} {item} last week and {b} {item} this week. "
                f"How many {item} has {name} collected altogether?",
            )
        )
        return text, f"{name} has {a} and gets {b} more, so {a} + {b} = {a + b}.", a + b
    a = rng.randint(2, 20)
    b = rng.randint(1, a - 1)
    text = rng.choice(
        (
            f"{name} has {a} {item}. {name} gives {b} {item} to a friend. "
            f"How many {item} does {name} have left?",
            f"{name} had {a} {item} and lost {b} of them. How many {item} does {name} have now?",
        )
    )
    return text, f"{name} starts with {a} and gives away {b}, so {a} - {b} = {a - b}.", a - b


def _level2(rng: random.Random) -> tuple[str, str, int]:
    name, (item, _) = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 30), rng.randint(1, 30)
    c = rng.randint(1, min(30, a + b - 1))
    text = rng.choice(
        (
            f"{name} has {a} {item}. {name} buys {b} more {item}, and then gives {c} {item} to a friend. "
            f"How many {item} does {name} have now?",
            f"A shop has {a} {item}. It receives {b} more {item} and then sells {c} {item}. "
            f"How many {item} does the shop have left?",
        )
    )
    solution = f"First {a} + {b} = {a + b}. Then {a + b} - {c} = {a + b - c}."
    return text, solution, a + b - c


def _level3(rng: random.Random) -> tuple[str, str, int]:
    name, (item, box) = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        c = min(c, a * b - 1)
        text = (
            f"{name} has {a} {box} with {b} {item} in each. {name} gives away {c} {item}. "
            f"How many {item} does {name} have left?"
        )
        solution = (
            f"{name} has {a} * {b} = {a * b} {item}. After giving away {c}: {a * b} - {c} = {a * b - c}."
        )
        return text, solution, a * b - c
    text = (
        f"{name} has {a} {box} with {b} {item} in each, and {c} loose {item}. "
        f"How many {item} does {name} have in total?"
    )
    solution = f"{name} has {a} * {b} = {a * b} {item} in the {box}. Adding {c}: {a * b} + {c} = {a * b + c}."
    return text, solution, a * b + c


_MAKERS: dict[int, Callable[[random.Random], tuple[str, str, int]]] = {
    0: _level0,
    1: _level1,
    2: _level2,
    3: _level3,
}


# ------------------------------------------------------------------------------------ disjoint-style demos
# Textbook phrasings and contexts the items never use (no NAMES, no ITEMS); MATH-style terse LaTeX solutions.
# Each template is (question, solution) with the slots {a} {b} {c} (operands) and {t} (intermediate) {r} (answer).
_ADD = "Adding, ${a} + {b} = \\boxed{{{r}}}$."
_SUB = "Subtracting, ${a} - {b} = \\boxed{{{r}}}$."
DEMO_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "add": (
        ("Compute ${a} + {b}$.", _ADD),
        ("What is the sum of {a} and {b}?", _ADD),
        ("A rope is cut into two pieces of lengths {a} m and {b} m. What was the length of the rope, in meters?",
         _ADD),
        ("At dawn the temperature was {a} degrees. By noon it had risen {b} degrees. What was the temperature "
         "at noon, in degrees?", _ADD),
        ("If $x - {b} = {a}$, what is the value of $x$?", "Adding {b} to both sides, $x = {a} + {b} = \\boxed{{{r}}}$."),
    ),
    "sub": (
        ("Evaluate ${a} - {b}$.", _SUB),
        ("What is {b} less than {a}?", _SUB),
        ("A tank holds {a} liters of water. After {b} liters are drained, what volume remains, in liters?", _SUB),
        ("If $x + {b} = {a}$, what is the value of $x$?",
         "Subtracting {b} from both sides, $x = {a} - {b} = \\boxed{{{r}}}$."),
    ),
    "add_sub": (
        ("Compute ${a} + {b} - {c}$.", "We have ${a} + {b} = {t}$, and ${t} - {c} = \\boxed{{{r}}}$."),
        ("What number is {c} less than the sum of {a} and {b}?",
         "The sum is ${a} + {b} = {t}$, so the number is ${t} - {c} = \\boxed{{{r}}}$."),
        ("A train departs from a station with {a} passengers. At the next stop, {b} passengers board and {c} get off. "
         "What is the number of passengers on the train after that stop?",
         "After boarding there are ${a} + {b} = {t}$, and after the stop ${t} - {c} = \\boxed{{{r}}}$."),
    ),
    "mul_add": (
        ("Compute ${a} \\times {b} + {c}$.", "We have ${a} \\times {b} = {t}$, so ${t} + {c} = \\boxed{{{r}}}$."),
        ("What is {c} more than the product of {a} and {b}?",
         "The product is ${a} \\times {b} = {t}$, and ${t} + {c} = \\boxed{{{r}}}$."),
        ("A hall has {a} rows of {b} seats, plus {c} folding chairs. Find the total number of places to sit.",
         "The rows give ${a} \\times {b} = {t}$ seats, so the total is ${t} + {c} = \\boxed{{{r}}}$."),
    ),
    "mul_sub": (
        ("Compute ${a} \\times {b} - {c}$.", "We have ${a} \\times {b} = {t}$, so ${t} - {c} = \\boxed{{{r}}}$."),
        ("What is {c} less than the product of {a} and {b}?",
         "The product is ${a} \\times {b} = {t}$, and ${t} - {c} = \\boxed{{{r}}}$."),
        ("A hall has {a} rows of {b} seats, and {c} of the seats are broken. Find the number of usable seats.",
         "The rows give ${a} \\times {b} = {t}$ seats, so ${t} - {c} = \\boxed{{{r}}}$ are usable."),
    ),
}  # fmt: skip


def _demo(rng: random.Random, kind: str, **slots: int) -> tuple[str, str, int]:
    question, solution = rng.choice(DEMO_TEMPLATES[kind])
    return question.format(**slots), solution.format(**slots), slots["r"]


def _demo_level0(rng: random.Random) -> tuple[str, str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return _demo(rng, "add", a=a, b=b, r=a + b)


def _demo_level1(rng: random.Random) -> tuple[str, str, int]:
    if rng.random() < 0.5:
        a = rng.randint(1, 19)
        b = rng.randint(1, 20 - a)
        return _demo(rng, "add", a=a, b=b, r=a + b)
    a = rng.randint(2, 20)
    b = rng.randint(1, a - 1)
    return _demo(rng, "sub", a=a, b=b, r=a - b)


def _demo_level2(rng: random.Random) -> tuple[str, str, int]:
    a, b = rng.randint(2, 30), rng.randint(1, 30)
    c = rng.randint(1, min(30, a + b - 1))
    return _demo(rng, "add_sub", a=a, b=b, c=c, t=a + b, r=a + b - c)


def _demo_level3(rng: random.Random) -> tuple[str, str, int]:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        c = min(c, a * b - 1)
        return _demo(rng, "mul_sub", a=a, b=b, c=c, t=a * b, r=a * b - c)
    return _demo(rng, "mul_add", a=a, b=b, c=c, t=a * b, r=a * b + c)


_DEMO_MAKERS: dict[int, Callable[[random.Random], tuple[str, str, int]]] = {
    0: _demo_level0,
    1: _demo_level1,
    2: _demo_level2,
    3: _demo_level3,
}


def _distinct(
    make: Callable[[random.Random], tuple[str, str, int]], rng: random.Random, level: int
) -> Iterable[tuple[str, str, int]]:
    """Endless stream of ``make``'s outputs with distinct texts; ValueError when the space is exhausted."""
    seen: set[str] = set()
    misses = 0
    while True:
        text, solution, answer = make(rng)
        if text in seen:
            misses += 1
            if misses > 10_000:  # the level's space of distinct texts is exhausted
                raise ValueError(
                    f"synthetic level {level}: cannot draw more than {len(seen)} distinct problems"
                )
            continue
        misses = 0
        seen.add(text)
        yield text, solution, answer


def problem_stream(level: int, seed: int) -> Iterable[tuple[str, str, int]]:
    """Endless stream of distinct (problem, solution, answer) of one level; deterministic in (level, seed)."""
    if level not in _MAKERS:
        raise ValueError(f"unknown synthetic level {level}; allowed: {list(LEVELS)}")
    rng = random.Random(f"icpo-synthetic/{seed}/{level}")  # str seeds are hashed stably (not PYTHONHASHSEED)
    for text, solution, answer in _distinct(_MAKERS[level], rng, level):
        yield text, f"{solution}\n{_boxed(answer)}", answer


def demo_stream(level: int, seed: int) -> Iterable[tuple[str, str, int]]:
    """Endless stream of distinct disjoint-style demos (problem, solution, answer) of one level; deterministic in
    (level, seed) and independent of :func:`problem_stream`. Solutions box their answer inline."""
    if level not in _DEMO_MAKERS:
        raise ValueError(f"unknown synthetic level {level}; allowed: {list(LEVELS)}")
    yield from _distinct(_DEMO_MAKERS[level], random.Random(f"icpo-synthetic-demos/{seed}/{level}"), level)


def generate_demos(levels: Iterable[int], per_level: int, seed: int) -> list[Problem]:
    """Disjoint-style demos, ``per_level`` of each level, ordered by level then index (split ``demo``). Levels
    can phrase the same question (an addition of level 0 is one of level 1): a text of an earlier level is
    skipped, so no two demos share a text."""
    out: list[Problem] = []
    seen: set[str] = set()
    for level in levels:
        stream = iter(demo_stream(level, seed))
        for i in range(per_level):
            text, solution, answer = next(stream)
            while text in seen:
                text, solution, answer = next(stream)
            seen.add(text)
            out.append(
                Problem(f"synthetic-l{level}-xdemo-{i:05d}", level, "demo", text, solution, str(answer))
            )
    return out


def generate_level(level: int, sizes: dict[str, int], seed: int) -> dict[str, list[Problem]]:
    """Disjoint splits of one level. ``sizes`` maps split name (eval / demo / train) to its row count.

    Splits are cut from one stream in the fixed order eval, demo, train.
    """
    stream = iter(problem_stream(level, seed))
    out: dict[str, list[Problem]] = {}
    for split in SPLITS:
        rows = []
        for i in range(sizes.get(split, 0)):
            text, solution, answer = next(stream)
            rows.append(
                Problem(f"synthetic-l{level}-{split}-{i:05d}", level, split, text, solution, str(answer))
            )
        out[split] = rows
    return out


def generate_splits(
    levels: Iterable[int], *, train: int, demo: int, eval: int, seed: int
) -> dict[str, list[Problem]]:
    """All levels: ``{"train": [...], "demo": [...], "eval": [...]}``, each list ordered by level then index."""
    out: dict[str, list[Problem]] = {split: [] for split in SPLITS}
    for level in levels:
        per_level = generate_level(level, {"train": train, "demo": demo, "eval": eval}, seed)
        for split in SPLITS:
            out[split].extend(per_level[split])
    return out


def splits_for(params: Params) -> dict[str, list[Problem]]:
    """The splits that ``params.data.synthetic`` and ``params.seed`` describe (train, demo and eval stages agree).

    ``demo`` holds the demo cache of ``data.synthetic.demo_style``: the disjoint-style demos
    (:func:`generate_demos`), or the same-style split cut from the items' stream (``same``)."""
    syn = params.data.synthetic
    splits = generate_splits(
        syn.levels,
        train=syn.train_per_level,
        demo=syn.demos_per_level,
        eval=syn.eval_per_level,
        seed=params.seed,
    )
    if syn.demo_style == "disjoint":
        splits["demo"] = generate_demos(syn.levels, syn.demos_per_level, params.seed)
    return splits


def eval_name(level: int) -> str:
    """Benchmark name of a held-out level, e.g. ``synthetic_l0`` (file ``data/eval/synthetic_l0.jsonl``)."""
    return f"synthetic_l{level}"
