"""The tiny world's two languages and its texts: English and a relexified "Swahili".

The second language (code ``sw``, so MGSM's Swahili cues apply) is English with every word
replaced by another one, one to one, in the same order: the languages differ only in their
words, so a model can carry a skill from one to the other if it maps the words onto each other.
Three phrases are translated whole so the evaluation's cues are the real MGSM ones
(``Question:`` / ``Swali:``, ``Step-by-Step Answer:`` / ``Jibu la Hatua kwa Hatua:``,
``The answer is`` / ``Jibu ni``). Names and digits are shared.

Texts are drawn from templates by a seeded ``random.Random``:

* ``story``: everyday sentences with the world's verbs and objects (buying, eating, losing, ...),
  no arithmetic; the verbs' meaning shows only through their contexts;
* ``lookup``: a question whose answer is a number already in it, in the MGSM answer format;
* ``problem``: a word problem of one or two steps (add, subtract, multiply) whose operation is
  named only by its words, with a chain of thought in the style of MGSM's exemplars;
* ``drill``: bare equations ``7 + 5 = 12.`` (arithmetic without words).
"""

from __future__ import annotations

import random
import re

NAMES = ["Tom", "Ana", "Juma", "Lila", "Ben", "Sara", "Omar", "Maya", "Ravi", "Eva", "Kofi", "Nia"]

# English word -> the second language's word. Objects are plural throughout.
OBJECTS = {
    "apples": "matofaa", "eggs": "mayai", "books": "vitabu", "pens": "kalamu", "cakes": "keki",
    "balls": "mipira", "cards": "kadi", "shells": "makombe", "coins": "sarafu", "flowers": "maua",
    "cookies": "biskuti", "toys": "vinyago", "marbles": "gololi", "stamps": "stempu",
    "oranges": "machungwa", "candies": "pipi",
}
FOODS = ["apples", "eggs", "cakes", "cookies", "oranges", "candies"]
# Verbs whose meaning decides the operation of a problem's step.
ADD_VERBS = {"buys": "ananunua", "finds": "anaokota", "gets": "anapokea", "wins": "anashinda",
             "makes": "anatengeneza", "picks": "anachuma"}
SUB_VERBS = {"eats": "anakula", "loses": "anapoteza", "sells": "anauza", "gives": "anatoa",
             "breaks": "anavunja", "uses": "anatumia"}
PLACES = {"market": "soko", "shop": "duka", "garden": "bustani", "school": "shule", "park": "uwanja",
          "house": "nyumba", "river": "mto", "farm": "shamba"}
WORDS = {
    "has": "ana", "have": "wana", "more": "zaidi", "fewer": "pungufu", "than": "kuliko",
    "how": "vipi", "many": "ngapi", "does": "je", "now": "sasa", "so": "hivyo", "each": "kila",
    "bag": "mfuko", "bags": "mifuko", "then": "kisha", "and": "na", "the": "yule", "at": "pale",
    "in": "ndani", "is": "yuko", "happy": "furaha", "hungry": "njaa", "sad": "huzuni",
    "to": "kwenda", "for": "kwaajili", "goes": "anaenda", "with": "pamoja", "friend": "rafiki",
    "a": "moja", "game": "mchezo", "box": "sanduku", "boxes": "masanduku", "holds": "inabeba",
    "after": "baada", "that": "hilo", "starts": "anaanza", "there": "huko", "are": "wapo",
    "today": "leo", "morning": "asubuhi", "evening": "jioni", "tired": "uchovu", "likes": "anapenda",
    "money": "pesa", "his": "wake", "her": "yake", "total": "jumla", "of": "wa", "all": "wote",
    "left": "kubaki", "together": "kwapamoja",
}
PHRASES = [
    ("Step-by-Step Answer:", "Jibu la Hatua kwa Hatua:"),
    ("Question:", "Swali:"),
    ("The answer is", "Jibu ni"),
]
LEXICON = {**OBJECTS, **ADD_VERBS, **SUB_VERBS, **PLACES, **WORDS}
_TOKEN = re.compile(r"[A-Za-z_]+|[^A-Za-z_]")


def _check_lexicon() -> None:
    targets = list(LEXICON.values())
    assert len(set(targets)) == len(targets), "the word map must be one to one"
    assert not set(targets) & set(LEXICON), "a word of the second language is also an English word"
    cue_words = {w for _, sw in PHRASES for w in re.findall(r"[A-Za-z]+", sw)}
    assert not cue_words & set(targets), "a cue word is also a mapped word"


_check_lexicon()


def relexify(text: str) -> str:
    """English text in the second language: the three cue phrases whole, then word for word."""
    for en, sw in PHRASES:
        text = text.replace(en, "\0" + sw.replace(" ", "\1") + "\0")
    out = []
    for piece in re.split("(\0[^\0]*\0)", text):
        if piece.startswith("\0"):
            out.append(piece.strip("\0").replace("\1", " "))
            continue
        for tok in _TOKEN.findall(piece):
            low = tok.lower()
            if low in LEXICON:
                sw = LEXICON[low]
                tok = sw.capitalize() if tok[0].isupper() else sw
            out.append(tok)
    return "".join(out)


# -- English texts -------------------------------------------------------------------------------

def story(rng: random.Random) -> str:
    """A few everyday sentences with the world's words, no arithmetic."""
    n, m = rng.sample(NAMES, 2)
    obj, food = rng.choice(list(OBJECTS)), rng.choice(FOODS)
    place = rng.choice(list(PLACES))
    k = rng.randint(1, 9)
    sentences = [
        f"{n} goes to the {place}.",
        f"At the {rng.choice(['market', 'shop'])}, {n} buys {k} {obj} with his money.",
        f"{n} is hungry, so {n} eats {k} {food}.",
        f"{n} loses {k} {obj} in the {place}. {n} is sad.",
        f"{n} gives {k} {obj} to {m}. {m} is happy.",
        f"{n} finds {k} {obj} in the {place}.",
        f"{n} sells {k} {obj} at the market for money.",
        f"{n} wins {k} {obj} in a game with {m}.",
        f"{n} makes {k} {food} for {m} in the morning.",
        f"{n} picks {k} flowers in the garden.",
        f"{n} uses {k} {obj} in a game.",
        f"{n} breaks {k} {obj} in the evening. {n} is sad.",
        f"Each bag has {k} {obj}.",
        f"A box holds {k} {obj}.",
        f"{n} has more {obj} than {m}.",
        f"{m} has fewer {obj} than {n}.",
        f"{n} and {m} are in the {place} today.",
        f"{n} likes {obj}. {n} gets {k} {obj} from a friend.",
        f"After that, {n} is tired.",
        f"There are {k} {obj} in the {place}.",
        f"{n} starts with {k} {obj} in the morning.",
        f"Then {n} goes to the {place} with {m}.",
        f"{n} is happy now.",
        f"{n} gets {k} bags with {k} {obj} each.",
        f"How many {obj} does {n} like?",
    ]
    return " ".join(rng.sample(sentences, rng.randint(3, 6)))


def lookup(rng: random.Random) -> tuple[str, str, int]:
    """(question, worked answer, number): the number is in the question, nothing to compute."""
    n = rng.choice(NAMES)
    obj, place = rng.choice(list(OBJECTS)), rng.choice(list(PLACES))
    k = rng.randint(1, 20)
    ctx = rng.choice([f"{n} goes to the {place}.", f"{n} is happy today.", f"{n} likes {obj}."])
    q = f"{ctx} {n} has {k} {obj}. How many {obj} does {n} have?"
    a = f"{n} has {k} {obj}. The answer is {k}."
    return q, a, k


def lookup_multi(rng: random.Random) -> tuple[str, str, int]:
    """(question, worked answer, number): two or three people with different things; the question
    asks about one of them, so the answer is read from the right place of the context."""
    k = rng.randint(2, 3)
    names, objs = rng.sample(NAMES, k), rng.sample(list(OBJECTS), k)
    nums = [rng.randint(1, 20) for _ in range(k)]
    i = rng.randrange(k)
    q = " ".join(f"{n} has {v} {o}." for n, v, o in zip(names, nums, objs, strict=True))
    q += f" How many {objs[i]} does {names[i]} have?"
    return q, f"{names[i]} has {nums[i]} {objs[i]}. The answer is {nums[i]}.", nums[i]


def _step(rng: random.Random, n: str, obj: str, have: int) -> tuple[str, str, int]:
    """One step on ``have`` objects: (question sentence, chain-of-thought sentence, new total)."""
    kind = rng.choice(["add", "sub", "mul"] if have <= 4 else ["add", "sub"])
    if kind == "sub" and have < 2:
        kind = "add"
    if kind == "add":
        v, k = rng.choice(list(ADD_VERBS)), rng.randint(1, 9)
        return (f"Then {n} {v} {k} {obj}.", f"{n} {v} {k} {obj}, so {have} + {k} = {have + k}.", have + k)
    if kind == "sub":
        v, k = rng.choice(list(SUB_VERBS)), rng.randint(1, min(9, have - 1))
        return (f"Then {n} {v} {k} {obj}.", f"{n} {v} {k} {obj}, so {have} - {k} = {have - k}.", have - k)
    k = rng.randint(2, 3)
    return (f"Then {n} gets {k} bags. Each bag has {have} {obj}.",
            f"{k} bags with {have} {obj} each is {k} * {have} = {k * have} {obj}.", k * have)


def problem(rng: random.Random, steps: int | None = None) -> tuple[str, str, int, str]:
    """(question, worked answer, number, equations) of a one- or two-step word problem."""
    n, m = rng.sample(NAMES, 2)
    obj = rng.choice(list(OBJECTS))
    steps = steps or rng.choice([1, 2, 2])
    if rng.random() < 0.25:  # comparison: "more than" adds, "fewer than" subtracts
        a = rng.randint(5, 12)
        if rng.random() < 0.5:
            k = rng.randint(1, 9)
            q = f"{m} has {a} {obj}. {n} has {k} more {obj} than {m}. How many {obj} does {n} have?"
            cot = f"{m} has {a} {obj}. {n} has {k} more, so {a} + {k} = {a + k}."
            ans = a + k
        else:
            k = rng.randint(1, min(9, a - 1))
            q = f"{m} has {a} {obj}. {n} has {k} fewer {obj} than {m}. How many {obj} does {n} have?"
            cot = f"{m} has {a} {obj}. {n} has {k} fewer, so {a} - {k} = {a - k}."
            ans = a - k
        return q, f"{cot} The answer is {ans}.", ans, cot.split("so ", 1)[1]
    have = rng.randint(2, 9)
    qs, cots, eqs = [f"{n} has {have} {obj}."], [f"{n} starts with {have} {obj}."], []
    for _ in range(steps):
        q, cot, have = _step(rng, n, obj, have)
        qs.append(q)
        cots.append(cot)
        eqs.append(re.search(r"\d+ [-+*] \d+ = \d+", cot).group(0) + ".")
    qs.append(f"How many {obj} does {n} have now?")
    return " ".join(qs), " ".join(cots) + f" The answer is {have}.", have, " ".join(eqs)


def drill(rng: random.Random) -> str:
    """Bare equations over the numbers the problems use."""
    out = []
    for _ in range(rng.randint(4, 8)):
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 3), rng.randint(2, 4)
            out.append(f"{a} * {b} = {a * b}.")
        elif op == "+":
            a, b = rng.randint(1, 18), rng.randint(1, 9)
            out.append(f"{a} + {b} = {a + b}.")
        else:
            a = rng.randint(2, 27)
            b = rng.randint(1, min(9, a - 1))
            out.append(f"{a} - {b} = {a - b}.")
    return " ".join(out)


def qa_text(question: str, answer: str) -> str:
    """One question and its worked answer as MGSM's native-cot prompt lays them out."""
    return f"Question: {question}\nStep-by-Step Answer: {answer}"
