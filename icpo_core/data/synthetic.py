"""Seeded arithmetic word problems with exact integer answers and worked solutions (the offline data set).

Levels (research on the offline model: SmolLM2-135M gets 0 % zero-shot and 16-69 % with one demo on these):

- 0: ``a + b``, single digits                        ("Tom has 7 marbles. He gets 6 more marbles. ...")
- 1: ``a + b`` or ``a - b``, numbers and result <= 20
- 2: ``a + b - c``, two steps, numbers <= 30
- 3: ``a * b + c`` or ``a * b - c``                  ("Mia has 5 boxes with 9 cookies in each box ...")

Every solution ends with ``The answer is \\boxed{N}.``. :func:`generate_splits` draws, per level, one stream of
distinct problem texts and cuts it into eval, demo and train splits, so the splits never share a problem text,
and the eval split depends only on (seed, level, eval size): growing the train split never changes the benchmark.
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


def problem_stream(level: int, seed: int) -> Iterable[tuple[str, str, int]]:
    """Endless stream of distinct (problem, solution, answer) of one level; deterministic in (level, seed)."""
    if level not in _MAKERS:
        raise ValueError(f"unknown synthetic level {level}; allowed: {list(LEVELS)}")
    rng = random.Random(f"icpo-synthetic/{seed}/{level}")  # str seeds are hashed stably (not PYTHONHASHSEED)
    seen: set[str] = set()
    misses = 0
    while True:
        text, solution, answer = _MAKERS[level](rng)
        if text in seen:
            misses += 1
            if misses > 10_000:  # the level's space of distinct texts is exhausted
                raise ValueError(
                    f"synthetic level {level}: cannot draw more than {len(seen)} distinct problems"
                )
            continue
        misses = 0
        seen.add(text)
        yield text, f"{solution}\n{_boxed(answer)}", answer


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
    """The splits that ``params.data.synthetic`` and ``params.seed`` describe (train, demo and eval stages agree)."""
    syn = params.data.synthetic
    return generate_splits(
        syn.levels,
        train=syn.train_per_level,
        demo=syn.demos_per_level,
        eval=syn.eval_per_level,
        seed=params.seed,
    )


def eval_name(level: int) -> str:
    """Benchmark name of a held-out level, e.g. ``synthetic_l0`` (file ``data/eval/synthetic_l0.jsonl``)."""
    return f"synthetic_l{level}"
