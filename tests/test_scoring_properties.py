"""Property-based tests of the scorer (hypothesis): it never raises, reads any supported writing of a
number back as that number, and never reads a wrong number as right.

The numbers are written here by a writer of their own (``write``), from the conventions the
scoring module's docstring states, not with the scorer's code.
"""

from __future__ import annotations

import unicodedata
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from hubswap.evaluate import score_response
from hubswap.evaluate.languages import LANGUAGES

LANGS = sorted(LANGUAGES)
MODES = ["native-cot", "en-cot", "direct", "chat"]
DOT_THOUSANDS = {"de", "es"}  # the languages that group thousands with "."
# The zero of every block of ten consecutive decimal digits Unicode has (Bengali, Thai, full-width, ...).
ZEROS = [c for c in map(chr, range(0x110000))
         if unicodedata.decimal(c, -1) == 0 and all(unicodedata.decimal(chr(ord(c) + d), -1) == d for d in range(10))]
NATIVE = {"bn": "\u09e6", "te": "\u0c66", "th": "\u0e50", "zh": "\uff10", "ja": "\uff10"}
SPACES = [" ", "\u00a0", "\u202f", "\u2009"]


def digits(s: str, zero: str) -> str:
    return "".join(chr(ord(zero) + int(c)) if c.isdigit() else c for c in s)


@st.composite
def written(draw, value: Decimal, lang: str) -> str:
    """``value`` written one of the ways the scorer promises to read in ``lang``."""
    sign, mag = ("-", -value) if value < 0 else ("", value)
    integer, _, frac = format(mag, "f").partition(".")
    frac = frac.rstrip("0") + "0" * draw(st.integers(0, 2))  # 18 / 18.0 / 18.00 / 3.50
    group = None
    if len(integer) > 3 and draw(st.booleans()):
        group = draw(st.sampled_from([",", "'", "\u2019", *SPACES, *(["."] if lang in DOT_THOUSANDS else [])]))
        head = len(integer) % 3 or 3
        integer = group.join([integer[:head], *(integer[i:i + 3] for i in range(head, len(integer), 3))])
    text = integer
    if frac:
        seps = [s for s in (".", ",") if s != group]
        # The one ambiguous writing: a single separator before exactly three digits, after 1-999.
        # It groups thousands (the docstring's rule), so a decimal there is written with "." where
        # "." is decimal, or with one more zero.
        if group is None and len(frac) == 3 and 1 <= int(integer) <= 999:
            seps = ["."] if lang not in DOT_THOUSANDS else []
            if not seps:
                frac, seps = frac + "0", [".", ","]
        text += draw(st.sampled_from(seps)) + frac
    zero = draw(st.sampled_from(["0", "0", NATIVE.get(lang, "0"), *ZEROS]))
    text = digits(text, zero)
    if zero == "\uff10" and draw(st.booleans()):  # full-width digits with full-width separators
        text = text.replace(",", "\uff0c").replace(".", "\uff0e")
    currency = draw(st.sampled_from(["", "$", "€", "£", "¥", "₹"]))
    if currency and draw(st.booleans()):
        text = currency + text
        currency = ""
    if sign:
        text = draw(st.sampled_from(["-", "\u2212", "\uff0d"])) + text
    return text + draw(st.sampled_from(["", " ", "\u00a0"])) + currency if currency else text


def values(max_places: int = 4):
    """Whole numbers of any size (MGSM's answers) and some decimals, of either sign."""
    whole = st.integers(-10**12, 10**15).map(Decimal)
    decimal = st.tuples(st.integers(-10**7, 10**7), st.integers(1, max_places)).map(
        lambda t: Decimal(t[0]).scaleb(-t[1]))
    return st.one_of(whole, whole, decimal)


def answer_text(lang: str, mode: str, number: str, *, before: str = "", after: str = "") -> str:
    """A response giving ``number`` as its answer the way ``mode`` expects one."""
    if mode == "direct":
        return f" {number}{after}"
    return f"{before}{LANGUAGES[lang].answer_line.format(number)}{after}"


# -- never raises ----------------------------------------------------------------------------------

_PIECES = st.one_of(
    st.text(max_size=30),
    st.sampled_from([p for lg in LANGUAGES.values() for p in (*lg.answer_phrases, lg.question, "The answer is")]),
    st.builds(digits, st.from_regex(r"-?\$?[0-9]{1,6}([.,' \u00a0][0-9]{1,4}){0,3}", fullmatch=True),
              st.sampled_from(ZEROS)),
    st.sampled_from([" ", "\n", "-", "−", ".", ",", "$", "€", "，", "．", "：", "\u3000", "'", "’", " — "]),
)
GOLDS = st.one_of(
    st.integers(), st.decimals(), st.floats(), st.text(max_size=12), st.none(), st.booleans(),
    st.sampled_from(["sNaN", "NaN", "-Infinity", "1e400", "1_000", "", "18.00"]),
)


@given(text=st.one_of(st.text(), st.lists(_PIECES, max_size=12).map("".join)), lang=st.sampled_from(LANGS),
       mode=st.sampled_from(MODES), gold=GOLDS)
def test_score_response_never_raises(text, lang, mode, gold):
    got = score_response(text, lang, gold, mode=mode)
    assert isinstance(got.correct, bool) and isinstance(got.strict_match, bool)
    assert isinstance(got.flexible_extract, bool)
    assert got.answer is None or Decimal(got.answer).is_finite()
    assert not got.correct or got.answer is not None


# -- every supported writing reads back ------------------------------------------------------------


@st.composite
def gold_and_response(draw):
    lang, mode = draw(st.sampled_from(LANGS)), draw(st.sampled_from(MODES))
    value = draw(values())
    text = draw(written(value, lang))
    return lang, mode, value, text


@given(case=gold_and_response(), gold_as=st.sampled_from([str, Decimal, "int-or-float"]))
def test_any_writing_of_the_gold_reads_back_right(case, gold_as):
    lang, mode, value, number = case
    gold = (int(value) if value == value.to_integral_value() else float(value)) if gold_as == "int-or-float" \
        else gold_as(value)
    if isinstance(gold, float) and Decimal(str(gold)) != value:
        gold = str(value)  # a float that cannot hold the value exactly is not this value
    got = score_response(answer_text(lang, mode, number), lang, gold, mode=mode)
    assert got.answer is not None and Decimal(got.answer) == value, (number, got)
    assert got.correct, (number, got)


@given(case=gold_and_response(), lead=st.sampled_from(["", "9 * 2 = {gold}. ", "{gold} - 1 = {wrong}. "]),
       tail=st.sampled_from(["", "\n\n{question} {gold}", " {question} Jibu ni {gold}", " ({gold}?)"]),
       other=values())
def test_a_wrong_number_is_never_read_as_right(case, lead, tail, other):
    """The gold may appear in the reasoning before the answer or in a next question after it."""
    lang, mode, wrong, number = case
    gold = other if other != wrong else wrong + 1
    question = LANGUAGES[lang].question
    if "Jibu ni" in tail and lang == "sw":
        tail = tail.replace("Jibu ni", "nini")  # that would be a later answer phrase of Swahili
    fmt = dict(gold=gold, wrong=wrong, question=question)
    text = answer_text(lang, mode, number, before=lead.format(**fmt),
                       after=(tail if mode != "direct" else "\n\n" + question + " {gold}").format(**fmt))
    got = score_response(text, lang, gold, mode=mode)
    assert not got.correct, (text, got)
    assert got.answer is not None and Decimal(got.answer) == wrong, (text, got)
