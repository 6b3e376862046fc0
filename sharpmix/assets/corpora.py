"""Generated demo corpora: a "general" synthetic language and arithmetic word problems.

Both are structured so a tiny model can learn them in a minute on CPU, and so that fine-tuning
on one measurably hurts the other. The general corpus describes a fixed little world: every
person has one home town, job, pet, favourite colour and food, and every document restates some
of these facts in varied sentence templates. A model can only predict the fact words by
remembering the world, which is exactly what fine-tuning on arithmetic erodes. The math corpus
is word problems with worked answers whose numbers are computable from the question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = [
    "ada",
    "alan",
    "anna",
    "boris",
    "carl",
    "clara",
    "dora",
    "emil",
    "ella",
    "finn",
    "greta",
    "hans",
    "ida",
    "ivan",
    "jonas",
    "kira",
    "lena",
    "luca",
    "mara",
    "milo",
    "nina",
    "olga",
    "otto",
    "paula",
    "rosa",
    "sami",
    "tara",
    "theo",
    "uma",
    "vera",
]
TOWNS = [
    "avon",
    "brill",
    "corrin",
    "dunmore",
    "elsby",
    "fenwick",
    "gorran",
    "holt",
    "ilsey",
    "jarrow",
]
JOBS = ["baker", "farmer", "teacher", "miller", "weaver", "sailor", "potter", "doctor"]
PETS = ["cat", "dog", "horse", "goat", "parrot", "rabbit"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
FOODS = ["bread", "apples", "soup", "cheese", "fish", "rice", "plums"]
ITEMS = ["apples", "pears", "coins", "books", "stones", "shells", "marbles", "cards"]


@dataclass(frozen=True)
class Person:
    """One inhabitant of the general corpus's world; these facts never change."""

    name: str
    town: str
    job: str
    pet: str
    colour: str
    food: str
    friend: str


def make_world(seed: int) -> list[Person]:
    """The fixed cast of the general corpus, drawn from ``seed``."""
    rng = random.Random(seed)
    friends = NAMES[1:] + NAMES[:1]
    return [
        Person(
            name=name,
            town=rng.choice(TOWNS),
            job=rng.choice(JOBS),
            pet=rng.choice(PETS),
            colour=rng.choice(COLOURS),
            food=rng.choice(FOODS),
            friend=friend,
        )
        for name, friend in zip(NAMES, friends, strict=True)
    ]


def _facts(p: Person) -> list[str]:
    # Several phrasings of each fact: the grammar varies, the world does not.
    return [
        f"{p.name} lives in {p.town} .",
        f"in {p.town} there is a {p.job} called {p.name} .",
        f"{p.name} works as a {p.job} .",
        f"the {p.job} {p.name} has a {p.pet} .",
        f"{p.name} keeps a {p.colour} {p.pet} at home in {p.town} .",
        f"the favourite colour of {p.name} is {p.colour} .",
        f"every morning {p.name} eats {p.food} .",
        f"{p.name} likes {p.food} more than anything .",
        f"{p.name} is a good friend of {p.friend} .",
        f"on sundays {p.name} visits {p.friend} .",
    ]


def general_documents(n: int, *, seed: int, world_seed: int) -> list[str]:
    """``n`` documents of 3-6 sentences, each about one or two people of the world.

    Args:
        n: Number of documents.
        seed: Seed of which facts and phrasings appear.
        world_seed: Seed of the world itself; keep it fixed across train and eval splits.
    """
    world = make_world(world_seed)
    rng = random.Random(seed)
    documents = []
    for _ in range(n):
        people = rng.sample(world, rng.choice((1, 1, 2)))
        sentences = [s for person in people for s in _facts(person)]
        documents.append(" ".join(rng.sample(sentences, rng.randint(3, 6))))
    return documents


def math_documents(n: int, *, seed: int) -> list[str]:
    """``n`` arithmetic word problems with worked answers.

    Addition, subtraction and multiplication of small numbers, e.g.
    ``"question : nina has 12 shells and finds 7 more . how many shells does nina have now ?
    answer : 12 + 7 = 19 . the answer is 19 ."``
    """
    rng = random.Random(seed)
    documents = []
    for _ in range(n):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randint(2, 60), rng.randint(2, 40)
            question = f"{name} has {a} {item} and finds {b} more ."
            work, result = f"{a} + {b}", a + b
        elif kind == 1:
            a = rng.randint(10, 90)
            b = rng.randint(1, a - 1)
            question = f"{name} has {a} {item} and gives away {b} ."
            work, result = f"{a} - {b}", a - b
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            question = f"{name} has {a} bags with {b} {item} in each bag ."
            work, result = f"{a} * {b}", a * b
        documents.append(
            f"question : {question} how many {item} does {name} have now ? "
            f"answer : {work} = {result} . the answer is {result} ."
        )
    return documents
