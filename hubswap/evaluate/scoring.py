"""Three verdicts from one generation: lm-eval strict-match, lm-eval flexible-extract, robust.

This module is the only place any verdict is computed: ``score_response`` for one response; the
`evaluate` metric (``metrics/mgsm.py``), which the runner uses for every model and
language, calls it for each question and only averages. No verdict depends on anything else, so
two scores of one response can never disagree, and no input (any text, any gold) raises.

``strict-match`` and ``flexible-extract`` reproduce lm-evaluation-harness 0.4.13's filters and its
``exact_match`` (ignore_case, ignore_punctuation) on ``str(answer_number)``:

* native-cot and chat: the language's answer pattern, first match (``[invalid]`` when none);
* en-cot: the English ``The answer is`` pattern;
* direct: lm-eval's first filter there is ``remove_whitespace``, the whole stripped response;
* flexible-extract: ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, the last match.

They keep lm-eval's quirks, so they stay comparable with published numbers: punctuation is removed
before comparing, so ``-18`` and ``1.8`` both match a gold 18 there.

The robust headline score (``correct``) compares *numbers*, read the way a person reads them:

* digits of any script (Bengali, Telugu, Thai, Devanagari, full-width, ...);
* a sign: ``-18``, ``−18`` (minus sign), ``－18`` (full width) and ``-$18`` are minus 18, wrong for
  gold 18; a dash with a space after it (``Ответ — 18``) is punctuation, not a sign;
* currency signs and words around the number are ignored: ``$18``, ``18 €``, ``18.00 ドル``;
* decimals are values: ``18.00``, ``18,0`` and ``18,00`` equal 18; ``1.8`` and ``1,8`` are 1.8,
  wrong for gold 18;
* thousands: groups of three digits after ``,``, a space (also no-break and thin spaces) or an
  apostrophe (``1,000``, ``1 000``, ``1'000``); ``.`` groups thousands only in German and Spanish
  (``1.000`` is 1000 there, 1 elsewhere), the MGSM languages that write ``.`` between thousands;
* the decimal separator is the last of two different ones (``1,234.5``, ``1.234,5``); a single
  ``,`` or ``.`` is decimal unless it is followed by exactly three digits and preceded by one to
  three digits that are not all zeros, where it groups thousands as above. So ``3,5``, ``2,50``,
  ``0,125`` and ``1234,567`` are decimals in every language, while a value with exactly three
  decimals and an integer part of 1-999 must be written with ``.`` and outside German and
  Spanish: ``1,125`` is read 1125 everywhere. MGSM's answers are whole numbers, and models write
  ``1,500`` for 1500 in every language far more often than three-decimal amounts.

It takes the number after the *last* answer phrase of the language (or the English one), else the
last number of the response (the first one for ``direct``, whose answer comes at once); a response
without any number has no answer and is wrong.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from hubswap.evaluate.languages import (
    ENGLISH_STRICT_REGEX,
    FLEXIBLE_REGEX,
    INVALID,
    Language,
    get_language,
)

_PUNCT = str.maketrans("", "", string.punctuation)
# Languages whose thousands separator is ".", so "1.500" means 1500 there.
_DOT_THOUSANDS = {"de", "es"}
_SPACES = "\u0020\u00a0\u202f\u2009"
_CURRENCY = "$€£¥₹₩₦"
# A number: an optional sign (a hyphen right before the digits or a currency sign), an optional
# currency sign, and either space-grouped thousands or digits joined by separators.
_NUMBER = re.compile(
    r"(?<![\d.,])(?P<sign>-(?=[" + _CURRENCY + r"]?\d))?[" + _CURRENCY + r"]?"
    r"(?P<num>\d{1,3}(?:[" + _SPACES + r"]\d{3})+(?:[.,]\d+)?(?![\d])"  # 1 000 / 1 000,5
    r"|\d+(?:[.,'’]\d+)*)"                                               # 1,000.5 / 18.00 / 3,5
)
_PHRASE_REACH = 64  # characters between an answer phrase and its number, at most
_PLAIN = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_FOLD = {"，": ",", "．": ".", "－": "-", "−": "-", "＄": "$", "：": ":", "\u3000": " "}


@dataclass(frozen=True)
class ResponseScore:
    """The verdicts on one response and what each one extracted."""

    strict_match: bool
    flexible_extract: bool
    correct: bool
    """The robust headline verdict."""
    strict_answer: str
    flexible_answer: str
    answer: str | None
    """The robust answer as a plain decimal string (``"1000"``, ``"3.5"``); None: no number found."""

    def to_json(self) -> dict:
        return asdict(self)


def lm_eval_exact_match(prediction: str, reference: str) -> bool:
    """lm-eval's ``exact_match`` with ``ignore_case`` and ``ignore_punctuation``."""
    return prediction.lower().translate(_PUNCT) == reference.lower().translate(_PUNCT)


def regex_filter(text: str, pattern: str, group_select: int = 0) -> str:
    """lm-eval's ``regex`` filter followed by ``take_first``."""
    matches = _compiled(pattern).findall(text)
    if not matches:
        return INVALID
    m = matches[group_select]
    if isinstance(m, tuple):
        m = next((g for g in m if g), INVALID)
    return m.strip()


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def strict_pattern(lang: Language, mode: str) -> str | None:
    """The strict-match pattern of a mode; None for direct (whole response)."""
    if mode == "direct":
        return None
    if mode == "en-cot":
        return ENGLISH_STRICT_REGEX
    if mode == "chat":
        return lang.chat_regex
    return lang.strict_regex


def gold_string(gold) -> str:
    """lm-eval's target: ``answer_number|string``."""
    return str(gold)


def score_response(text: str, lang: str, gold, *, mode: str = "native-cot") -> ResponseScore:
    """Score one response to an MGSM question of language ``lang`` whose answer is ``gold``.

    ``mode`` is the prompt mode the response answers (it selects lm-eval's strict filter).
    """
    language = get_language(lang)
    ref = gold_string(gold)
    pattern = strict_pattern(language, mode)
    strict = text.strip() if pattern is None else regex_filter(text, pattern)
    flexible = regex_filter(text, FLEXIBLE_REGEX, group_select=-1)
    value = extract_answer(text, language, first=mode == "direct")
    return ResponseScore(
        strict_match=lm_eval_exact_match(strict, ref),
        flexible_extract=lm_eval_exact_match(flexible, ref),
        correct=value is not None and _equal(value, gold),
        strict_answer=strict,
        flexible_answer=flexible,
        answer=None if value is None else plain_number(value),
    )


def normalize(text: str) -> str:
    """Map digits of every script to ASCII and fold full-width punctuation."""
    out = []
    for ch in text:
        if ch in _FOLD:
            out.append(_FOLD[ch])
        elif ch.isdecimal() and not ch.isascii():
            out.append(str(unicodedata.decimal(ch)))
        else:
            out.append(ch)
    return "".join(out)


def parse_number(token: str, lang: str = "en") -> Decimal | None:
    """A number token as written in ``lang`` (separators, decimal comma) to a ``Decimal``.

    The rules are the module docstring's; None when the token holds no number.
    """
    s = normalize(token).strip()
    negative = s.startswith("-")
    s = s.lstrip("-").strip().strip(_CURRENCY).strip()
    for sp in _SPACES + "'’":
        s = s.replace(sp, "")
    if "." in s and "," in s:
        decimal_sep = "." if s.rfind(".") > s.rfind(",") else ","
        s = s.replace("," if decimal_sep == "." else ".", "").replace(decimal_sep, ".")
    elif s.count(",") > 1 or s.count(".") > 1:
        s = s.replace(",", "").replace(".", "")
    elif "," in s or "." in s:
        sep = "," if "," in s else "."
        head, tail = s.split(sep)
        groups_thousands = sep == "," or lang in _DOT_THOUSANDS
        if groups_thousands and len(tail) == 3 and 1 <= len(head) <= 3 and head.strip("0"):
            s = head + tail
        else:
            s = head + "." + tail
    if not _PLAIN.fullmatch(s):  # Decimal() would also take "NaN", "Infinity", "1_000"
        return None
    value = Decimal(s)
    return -value if negative else value


def _numbers(text: str) -> list[re.Match]:
    return list(_NUMBER.finditer(text))


@lru_cache(maxsize=16)
def _phrase_regex(lang: str) -> re.Pattern:
    language = get_language(lang)
    # "\boxed{" is how math fine-tunes (OpenMath2, the flagship's task expert) mark the final answer.
    phrases = sorted({*language.answer_phrases, "The answer is", language.answer_line.split("{}")[0].strip(),
                      "\\boxed{"},
                     key=len, reverse=True)
    return re.compile("|".join(re.escape(normalize(p)) for p in phrases), re.IGNORECASE)


def extract_answer(text: str, language: Language | str, *, first: bool = False) -> Decimal | None:
    """The robust answer: the number after the last answer phrase, else the last number (the
    first one with ``first``: a direct answer comes at once, anything after it is chatter)."""
    code = language if isinstance(language, str) else language.code
    norm = normalize(text)
    for phrase in reversed(list(_phrase_regex(code).finditer(norm))):
        end = phrase.end()
        # Only a number soon after the phrase, on its line, counts: searching a bounded window keeps
        # a degenerate response (thousands of phrases, no number) linear in its length.
        m = _NUMBER.search(norm, end, end + _PHRASE_REACH + 8)
        if m and m.start() - end <= _PHRASE_REACH and "\n" not in norm[end:m.start()]:
            value = parse_number(_NUMBER.match(norm, m.start()).group(0), code)
            if value is not None:
                return value
    found = _numbers(norm)
    for m in (found if first else reversed(found)):
        value = parse_number(m.group(0), code)
        if value is not None:
            return value
    return None


def _equal(value: Decimal, gold) -> bool:
    try:
        return value == Decimal(str(gold))
    except InvalidOperation:
        return False


def plain_number(value: Decimal) -> str:
    """``Decimal("18.00")`` -> ``"18"``, ``Decimal("3.50")`` -> ``"3.5"``, at any length."""
    integral = value.to_integral_value()
    if value == integral:
        return format(integral, "f")
    return format(value, "f").rstrip("0")
