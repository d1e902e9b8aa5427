"""Does a passage support a sentence, or contradict it? Rule-based, offline and deterministic.

`check(sentence, passage)` is what `llmtailor.eval.grounding` uses for faithfulness, citation correctness and the
context metrics. A sentence is supported when

1. enough of its content is in the passage: >= 60% of its content words (Snowball stems, a few irregular verbs and
   synonyms folded, numbers read as values: "fourteen" = "14", "one day" = "24 hours"), and
2. no rule finds a conflict:

   * **numbers**: every number in the sentence occurs in the passage with a compatible unit ("14 days" = "two weeks",
     "850 grams" = "0.85 kilograms"; "24 days" != "24 hours", "20 euros" != "20 cents"), counted thing ("two
     reviewers" != "one reviewer") and bound ("at least 150" != "at most 150", "before 1 June" != "after 1 June";
     "no more than" = "up to", a negation right before a bound flips it);
   * **dates**: day and month together ("14 June" != "15 June"), years, clock times, and month, weekday and season
     names ("Monday to Friday" covers Wednesday, not Saturday);
   * **negation and opposites**: each clause of the sentence is matched to the passage clause that shares most of
     its words; their polarity must agree. Polarity counts negations (not, no, never, n't, without, avoid, ...),
     opposite words (include/exclude, allow/forbid, automatic/manual, rise/fall, higher/lower, own/another, ...) and
     prefixes ("unpaid" against "paid", "non-refundable" against "refundable"), so "X is not due" conflicts with
     "X is due" while "VAT is not included" agrees with "Prices exclude VAT";
   * **names**: capitalised words, acronyms and codes (X200) of the sentence must occur in the passage, and a name
     after a preposition must not replace the passage's name in the same slot ("founded in Amsterdam" against
     "founded in Rotterdam");
   * **quantifiers**: "always" / "all" against a passage clause restricted by "only" / "unless" / "if" / "some".

What rules cannot see (a model would): swapped roles with the same words ("Great Britain ceded Gibraltar to Spain"),
details added to an otherwise supported sentence, and paraphrases that share few words. The labelled pairs in
tests/data/faithfulness_pairs.json and bench/faithfulness.py measure both kinds of error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import Stemmer

SUPPORT = 0.6  # share of the sentence's content words that must occur in the passage
_STEMMER = Stemmer.Stemmer("english")
_CITE = re.compile(r"\[(\d{1,3})\]")


@lru_cache(maxsize=65536)
def _stem(w: str) -> str:
    return _STEMMER.stemWord(w)


# ---- lexicons (written as words; compared as stems) ----------------------------------------------------------------
_STOP = frozenset(
    "a an the and or but if then else of to in on at by for with from as is are was were be been being it its this "
    "that these those i you he she we they me him her us them my your his our their what which who whom whose when "
    "where why how both each few most some such so too very can will just do does did done have has had having "
    "should would could may might must shall about again against up down out off further here there also please "
    "thanks thank yes ok okay per any".split()
)
_NEGATIONS = frozenset("not no never none nobody nothing neither nor without non avoid refrain".split())
_AUX = frozenset("is are was were be been has have had can could may might must shall should will would do does "
                 "did still also then".split())
_DETERMINERS = frozenset("the a an this that these those my your his her its our their some any".split())
_CLAUSE_BREAKS = frozenset("but while whereas although though because so however unless which".split())
_RESTRICTIVE = frozenset("only unless if some sometimes most certain".split())
_UNIVERSAL = frozenset("always all every everyone everything everybody".split())
# irregular forms -> base word, and synonyms -> one word (applied before stemming)
_LEMMA = {
    "grew": "grow", "grown": "grow", "rose": "rise", "risen": "rise", "fell": "fall", "fallen": "fall", "got": "get",
    "gotten": "get", "gave": "give", "given": "give", "kept": "keep", "lost": "lose", "paid": "pay", "sold": "sell",
    "bought": "buy", "won": "win", "began": "start", "begun": "start", "begin": "start", "begins": "start",
    "took": "take", "taken": "take", "went": "go", "gone": "go", "made": "make", "held": "hold", "sent": "send",
    "spent": "spend", "brought": "bring", "told": "tell", "said": "say", "met": "meet", "shown": "show",
    "chose": "choose", "chosen": "choose", "drove": "drive", "driven": "drive", "wrote": "write", "written": "write",
    "ran": "run", "came": "come", "became": "become", "left": "leave", "found": "find", "led": "lead",
    "receive": "get", "receives": "get", "received": "get", "obtain": "get", "obtains": "get", "obtained": "get",
    "need": "require", "needs": "require", "needed": "require", "retain": "keep", "retains": "keep",
    "retained": "keep", "store": "keep", "stores": "keep", "stored": "keep", "indicate": "show", "indicates": "show",
    "indicated": "show", "staff": "employee", "employs": "employee", "employ": "employee", "employed": "employee",
    "employees": "employee", "purchase": "buy", "purchased": "buy", "permit": "allow", "permits": "allow",
    "permitted": "allow", "yearly": "annual", "annually": "annual", "following": "next", "center": "centre",
    "centers": "centre", "meter": "metre", "meters": "metre", "email": "mail", "emails": "mail", "emailed": "mail",
    "large": "big", "larger": "bigger", "fast": "quick", "faster": "quicker", "finish": "end", "finishes": "end",
    "finished": "end",
}
# opposites: the second word of a pair reads as "not" the first
_OPPOSITES = [
    ("include", "exclude"), ("allow", "forbid"), ("allow", "prohibit"), ("allow", "ban"), ("allow", "disallow"),
    ("accept", "reject"), ("accept", "refuse"), ("approve", "reject"), ("approve", "deny"),
    ("automatic", "manual"), ("automatically", "manually"), ("open", "close"), ("enable", "disable"),
    ("add", "remove"), ("win", "lose"), ("gain", "lose"), ("buy", "sell"), ("pass", "fail"), ("true", "false"),
    ("mandatory", "optional"), ("require", "optional"), ("public", "private"), ("internal", "external"),
    ("same", "different"), ("start", "end"), ("own", "another"), ("own", "other"), ("maximum", "minimum"),
    ("early", "late"), ("earlier", "later"), ("first", "last"), ("safe", "dangerous"), ("always", "never"),
    ("increase", "decrease"), ("rise", "fall"),
    ("raise", "lower"), ("grow", "shrink"), ("grow", "fall"), ("higher", "lower"), ("high", "low"),
    ("more", "less"), ("more", "fewer"), ("greater", "smaller"), ("bigger", "smaller"), ("longer", "shorter"),
    ("long", "short"), ("above", "below"), ("highest", "lowest"), ("largest", "smallest"),
    ("biggest", "smallest"), ("longest", "shortest"), ("maximal", "minimal"), ("often", "rarely"),
    ("often", "seldom"), ("frequently", "rarely"), ("frequently", "seldom"), ("frequent", "rare"),
    ("together", "separately"), ("together", "apart"), ("east", "west"), ("eastern", "western"),
    ("north", "south"), ("northern", "southern"), ("success", "failure"),
]
_POLE = {"frequently": "often", "frequent": "often", "highest": "higher", "largest": "bigger", "biggest": "bigger",
         "longest": "longer", "grow": "rise", "increase": "rise", "raise": "rise", "higher": "rise", "high": "rise",
         "more": "rise", "greater": "rise", "bigger": "rise", "longer": "rise", "above": "rise"}
_NUM_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "half": 0.5, "dozen": 12,
}
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9,
    "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14, "fifteenth": 15,
    "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}
_NUMBER_WORDS = frozenset(_NUM_WORDS) | frozenset(_ORDINALS)
_PRONOUN_ONE = frozenset("another the this that which any each every no a".split())
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_UNITS: dict[str, tuple[str, float]] = {}
for _dim, _entries in {
    "time": [("second seconds sec secs", 1), ("minute minutes min mins", 60), ("hour hours hr hrs h", 3600),
             ("day days", 86400), ("week weeks", 604800), ("fortnight fortnights", 1209600)],
    "calendar": [("month months", 1), ("quarter quarters", 3), ("year years", 12), ("decade decades", 120)],
    "mass": [("milligram milligrams mg", 0.001), ("gram grams g", 1), ("kilogram kilograms kilo kilos kg", 1000),
             ("tonne tonnes ton tons", 1_000_000)],
    "length": [("millimetre millimetres millimeter millimeters mm", 0.001),
               ("centimetre centimetres centimeter centimeters cm", 0.01), ("metre metres meter meters m", 1),
               ("kilometre kilometres kilometer kilometers km", 1000), ("mile miles", 1609.344)],
    "eur": [("euro euros eur €", 100), ("cent cents", 1)],
    "usd": [("dollar dollars usd $", 1)],
    "gbp": [("pound pounds gbp £", 1)],
    "percent": [("percent % pct", 1)],
    "degree": [("degree degrees", 1)],
    "data": [("byte bytes", 1), ("kb kilobyte kilobytes", 1e3), ("mb megabyte megabytes", 1e6),
             ("gb gigabyte gigabytes", 1e9), ("tb terabyte terabytes", 1e12)],
    "times": [("time times", 1)],
}.items():
    for _words, _factor in _entries:
        for _w in _words.split():
            _UNITS[_w] = (_dim, _factor)
_MONTHS = "january february march april may june july august september october november december".split()
_WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
_SEASONS = ("summer", "winter", "autumn")
_WEEK_PARTS = {"weekday": _WEEKDAYS[:5], "weekend": _WEEKDAYS[5:]}
_RATE_WORDS = {"daily": "day", "weekly": "week", "monthly": "month", "hourly": "hour", "annual": "year",
               "annually": "year", "yearly": "year"}
_ONE_OF = frozenset("a an per each every one".split())
_PREPOSITIONS = frozenset("in at to from for with by on of".split())

# phrases rewritten before tokenising: bounds become marker words, contractions and spellings are expanded
_MIN, _MAX, _MIN_AFTER, _MAX_AFTER = "qqmin", "qqmax", "qqminpost", "qqmaxpost"
_REWRITES = [(re.compile(p, re.I), r) for p, r in [
    (r"[’‘]", "'"), (r"[–—]", " - "), (r"\bcan(?:'|no)t\b", "can not"), (r"\bwon't\b", "will not"),
    (r"\bshan't\b", "shall not"), (r"n't\b", " not"), (r"\bno one\b", "nobody"), (r"\bper cent\b", "percent"),
    (r"\btwice\b", "two times"), (r"\bthrice\b", "three times"),
    (r"\b(?:or|and) (?:more|above|over|longer|later|higher|greater)\b", f" {_MIN_AFTER} "),
    (r"\b(?:or|and) (?:less|fewer|under|below|shorter|earlier|lower)\b", f" {_MAX_AFTER} "),
    (r"\b(?:at (?:the )?least|(?:a )?minimum of|(?:more|greater|higher|larger|longer|later) than|over|above|"
     r"exceed(?:s|ed|ing)?|after|since|beyond)\b", f" {_MIN} "),
    (r"\b(?:at (?:the )?most|(?:a )?maximum of|up to|(?:less|fewer|lower|smaller|shorter|earlier) than|under|"
     r"below|within|before|until|till)\b", f" {_MAX} "),
]]
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_TOKEN = re.compile(
    r"(?P<clock>\b\d{1,2}(?::\d{2})?\s*[ap]\.?\s?m\b\.?|\b\d{1,2}:\d{2}\b)"
    r"|(?P<alnum>(?<![\w.,])(?:[^\W\d_]+\d[^\W_]*|\d+(?:\.\d+)?[^\W\d_]+[^\W_]*))"
    r"|(?P<num>[€$£]?\d+(?:,\d{3})*(?:\.\d+)?%?)"
    r"|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)?)"
    r"|(?P<stop>[.!?]+(?=\s|$)|\n\s*\n)"
    r"|(?P<brk>[;:,()\n]|\s-\s)"
)


# ---- analysed text -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quantity:
    value: float
    dim: str | None  # a known unit's dimension ("time", "eur", "date:june", "clock", "year"), else None
    noun: str | None  # for plain counts, the stem of the counted thing ("review" in "two reviewers")
    bound: int  # +1 at least / more than / after, -1 at most / under / before, 0 none
    implicit: bool = False  # "a week", "daily": a rate; the passage must not give a different amount of the unit

    def key(self) -> str:
        return f"#{self.dim or ''}:{self.value:g}"


@dataclass
class Clause:
    words: list[str] = field(default_factory=list)  # canonical content stems, in order
    surface: list[str] = field(default_factory=list)  # their lowercase surface forms (for prefix opposites)
    flips: int = 0  # negations and opposite words
    scopes: list[str | None] = field(default_factory=list)  # per flip, the word it bears on
    quantifiers: set[str] = field(default_factory=set)
    quantities: list[Quantity] = field(default_factory=list)
    names: list[tuple[str, str]] = field(default_factory=list)  # (stem, slot): slot is the preposition before
    # the name, "^" for a multi-word name opening the clause, "^1" for a one-word one (a name only if it also
    # occurs capitalised mid-sentence)


@dataclass
class Sentence:
    clauses: list[Clause] = field(default_factory=list)
    names: list[tuple[str, str | None]] = field(default_factory=list)  # (stem, preposition before it)


@dataclass
class Analysis:
    sentences: list[Sentence]
    words: frozenset[str]  # all canonical content stems (quantities as "#dim:value")
    vocab: frozenset[str]  # every lowercase surface word and its stem (for name look-up)
    quantities: list[Quantity]
    names: frozenset[str]  # stems of names and codes
    calendar: frozenset[str]  # months, weekdays and seasons named (ranges expanded)
    ranges: frozenset[tuple[str, str]] = frozenset()  # (first, last) of each named range


def _build_opposites() -> dict[str, tuple[str, bool]]:
    out: dict[str, tuple[str, bool]] = {}
    for pos, neg in _OPPOSITES:
        canon = _stem(_POLE.get(pos, pos))
        for word, flipped in ((pos, False), (neg, True)):
            out.setdefault(word, (canon, flipped))
            out.setdefault(_stem(word), (canon, flipped))
    return out


_OPPOSITE_OF = _build_opposites()


@lru_cache(maxsize=65536)
def _canon(low: str) -> tuple[str, bool]:
    """Canonical stem of a lowercase word and whether it reads as "not" that stem (an opposite word)."""
    low = _LEMMA.get(low, low)
    if low.endswith("'s"):
        low = low[:-2]
    if low in _OPPOSITE_OF:
        return _OPPOSITE_OF[low]
    if low == "others":  # "tell others": a pronoun, not "other" as opposed to "own"
        return low, False
    stem = _stem(low)
    return _OPPOSITE_OF.get(stem, (stem, False))


def _number_from_words(words: list[str]) -> float | None:
    total, current, seen = 0.0, 0.0, False
    for w in words:
        if w in _NUM_WORDS:
            current += _NUM_WORDS[w]
            seen = True
        elif w in _ORDINALS:
            current += _ORDINALS[w]
            seen = True
        elif w in _SCALES:
            current = (current or 1) * _SCALES[w]
            if _SCALES[w] >= 1000:
                total, current = total + current, 0.0
            seen = True
    return total + current if seen else None


def _unit_of(word: str) -> tuple[str, float] | None:
    low = word.lower()
    if low in _UNITS:
        return _UNITS[low]
    return None


def _rewrite(text: str) -> str:
    text = _CITE.sub(" ", text or "")
    text = _ISO_DATE.sub(lambda m: f"{int(m.group(3))} {_MONTHS[int(m.group(2)) - 1].title()} {m.group(1)}"
                         if 1 <= int(m.group(2)) <= 12 else m.group(0), text)
    for pattern, repl in _REWRITES:
        text = pattern.sub(repl, text)
    return text


def _raw_tokens(text: str) -> list[list[tuple]]:
    """Sentences of tokens (text already rewritten): ("w", surface, initial, is_code), ("n", value, unit, noun,
    kind), ("brk",)."""
    sents: list[list[tuple]] = [[]]
    initial = True
    for m in _TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group(0)
        cur = sents[-1]
        if kind == "stop":
            sents.append([])
            initial = True
            continue
        if kind == "brk":
            cur.append(("brk",))
            initial = initial or tok in (":", "\n")  # a new line may start a heading or a list item
            continue
        if kind == "clock":
            hm = re.match(r"(\d{1,2})(?::(\d{2}))?\s*([ap])?", tok)
            hours, minutes = int(hm.group(1)), int(hm.group(2) or 0)
            if hm.group(3) == "p" and hours < 12:
                hours += 12
            elif hm.group(3) == "a" and hours == 12:
                hours = 0
            cur.append(("n", float(hours * 60 + minutes), ("clock", 1.0), None, "clock"))
        elif kind == "num":
            unit = None
            if tok[0] in "€$£":
                unit, tok = _UNITS[tok[0]], tok[1:]
            if tok.endswith("%"):
                unit, tok = _UNITS["%"], tok[:-1]
            cur.append(("n", float(tok.replace(",", "")), unit, None, "comma" if "," in tok else "digits"))
        elif kind == "alnum":
            mo = re.fullmatch(r"(\d+(?:\.\d+)?)(st|nd|rd|th)", tok, re.I)
            mu = re.fullmatch(r"(\d+(?:\.\d+)?)([^\W\d_]+)", tok)
            if mo:
                cur.append(("n", float(mo.group(1)), None, None, "ordinal"))
            elif mu and _unit_of(mu.group(2)):
                cur.append(("n", float(mu.group(1)), _unit_of(mu.group(2)), None, "digits"))
            else:
                cur.append(("w", tok, False, True))  # a code such as X200: a name
        else:
            cur.append(("w", tok, initial, False))
        initial = False
    return [s for s in sents if s]


def _merge_numbers(toks: list[tuple]) -> list[tuple]:
    """Number words ("twenty-five", "one hundred and fifty") and scales ("48 million") become one number token."""
    out: list[tuple] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t[0] == "w" and t[1].lower() in _NUMBER_WORDS:
            low = t[1].lower()
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            nxt_low = nxt[1].lower() if nxt and nxt[0] == "w" else ""
            prev_low = out[-1][1].lower() if out and out[-1][0] == "w" else ""
            # "first" / "second" are numbers only as "the first day", "day one"-like uses: before a unit or
            # "of" ("the first of May"), or after "day" / "week"; "second" after a number is the unit
            ordinal_use = bool(_unit_of(nxt_low)) or nxt_low == "of" or prev_low in ("day", "week")
            pronoun = low == "one" and prev_low in _PRONOUN_ONE  # "another one", "the one"
            if pronoun or low in ("first", "second") and (
                    not ordinal_use or (low == "second" and out and out[-1][0] == "n")):
                out.append(t)
                i += 1
                continue
            j, words = i, []
            while j < len(toks) and toks[j][0] == "w":
                w = toks[j][1].lower()
                if w in _NUM_WORDS or w in _ORDINALS or w in _SCALES:
                    words.append(w)
                    j += 1
                elif w == "and" and words and j + 1 < len(toks) and toks[j + 1][0] == "w" and \
                        toks[j + 1][1].lower() in _NUM_WORDS:
                    j += 1
                else:
                    break
            value = _number_from_words(words)
            if value is not None:
                out.append(("n", value, None, None, "words"))
                i = j
                continue
        if t[0] == "w" and t[1].lower() in _SCALES and out and out[-1][0] == "n" and out[-1][2] is None:
            n = out.pop()
            out.append(("n", n[1] * _SCALES[t[1].lower()], None, None, "digits"))
            i += 1
            continue
        out.append(t)
        i += 1
    return out


def _month(tok: tuple, prev: tuple | None, nxt: tuple | None) -> str | None:
    """The month a word names. "May" and "March" only when capitalised mid-sentence or next to a number."""
    low = tok[1].lower()
    if low not in _MONTHS:
        return None
    if low in ("may", "march"):
        near_number = (prev is not None and prev[0] == "n") or (nxt is not None and nxt[0] == "n")
        if not (near_number or (tok[1][0].isupper() and not tok[2])):
            return None
    return low


def _is_name(tok: tuple) -> bool:
    surface, initial = tok[1], tok[2]
    if tok[3]:  # code with digits
        return True
    if len(surface) < 2:  # "I"
        return False
    if len(surface) >= 2 and surface.isupper() and surface.isalpha():
        return surface not in ("I", "OK", "AM", "PM")
    return surface[0].isupper() and not initial and surface.lower() not in _MONTHS + _WEEKDAYS


def _capitalised_run(toks: list[tuple], i: int) -> list[str]:
    """Capitalised words opening a clause ("Priya Nair served ..."): the subject's name, if it is one."""
    run: list[str] = []
    while i < len(toks) and toks[i][0] == "w" and toks[i][1][:1].isupper():
        low = toks[i][1].lower()
        if low in _STOP or low in _DETERMINERS or low in _CLAUSE_BREAKS or low in _NEGATIONS or \
                low in _NUMBER_WORDS or low in _MONTHS or _weekday(low):
            break
        run.append(toks[i][1])
        i += 1
    return run


def _joins_clauses(toks: list[tuple], i: int) -> bool:
    """'and' / 'or' before a verb ("... and are never sent", "... and closes at ..."), not between two names,
    numbers or nouns ("Tuesday and Thursday")."""
    if toks[i][1].lower() not in ("and", "or") or i + 1 >= len(toks) or toks[i + 1][0] != "w":
        return False
    nxt = toks[i + 1][1]
    low = nxt.lower()
    return low in _AUX or low in _NEGATIONS or (low.endswith("s") and nxt.islower())


def _weekday(low: str) -> str | None:
    low = low[:-1] if low.endswith("s") and low[:-1] in _WEEKDAYS else low
    return low if low in _WEEKDAYS else None


class _ClauseBuilder:
    """Collects one sentence's clauses; negations are counted when their clause closes (a bound may use one up)."""

    def __init__(self) -> None:
        self.sentence = Sentence()
        self.negs: list[int] = []  # token positions of negations not used up by a bound
        self.scope: dict[int, str] = {}  # negation position -> the first content word after it
        self.start = 0
        self.clause = Clause()
        self.sentence.clauses.append(self.clause)

    def close(self, next_start: int) -> None:
        self.clause.flips += len(self.negs)
        self.clause.scopes.extend(self.scope.get(n) for n in self.negs)
        self.negs, self.scope = [], {}
        self.clause = Clause()
        self.sentence.clauses.append(self.clause)
        self.start = next_start

    def word(self, stem: str, surface: str, flipped: bool) -> None:
        for n in self.negs:
            self.scope.setdefault(n, stem)
        if flipped:
            self.clause.flips += 1
            self.clause.scopes.append(stem)
        self.clause.words.append(stem)
        self.clause.surface.append(surface)


@lru_cache(maxsize=8192)
def analyse(text: str) -> Analysis:
    """Sentences and clauses of a text with their content words, polarity, numbers, names and dates."""
    sentences: list[Sentence] = []
    all_words: set[str] = set()
    vocab: set[str] = set()
    quantities: list[Quantity] = []
    names: set[str] = set()
    calendar: set[str] = set()
    text = _rewrite(text)
    for raw in _raw_tokens(text):
        toks = _merge_numbers(raw)
        b = _ClauseBuilder()
        bound_at: dict[int, int] = {}  # token position -> +1 / -1 for bound markers
        consumed_units: set[int] = set()
        for i, t in enumerate(toks):
            prev = toks[i - 1] if i else None
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if t[0] == "brk":
                b.close(i + 1)
                continue
            if t[0] == "n":
                q = _quantity(toks, i, bound_at, b.negs, consumed_units)
                b.clause.quantities.append(q)
                quantities.append(q)
                b.word(q.key(), q.key(), False)
                continue
            low = t[1].lower()
            vocab.update((low, _stem(low)))
            if low in (_MIN, _MAX):
                bound_at[i] = 1 if low == _MIN else -1
                continue
            if low in (_MIN_AFTER, _MAX_AFTER):
                continue  # read by _quantity of the number before it
            if (low in _CLAUSE_BREAKS or _joins_clauses(toks, i)) and b.clause.words:
                b.close(i)
            if i == b.start:
                run = _capitalised_run(toks, i)
                b.clause.names.extend((_stem(w.lower()), "^" if len(run) > 1 else "^1") for w in run)
            if low in _NEGATIONS:
                b.negs.append(i)
                continue
            if low in _RESTRICTIVE or low in _UNIVERSAL:
                b.clause.quantifiers.add(low)
            month = _month(t, prev, nxt)
            day = _weekday(low)
            part = low[:-1] if low.endswith("s") and low[:-1] in _WEEK_PARTS else low
            if month or day or low in _SEASONS:
                calendar.add(month or day or low)
            elif part in _WEEK_PARTS:
                calendar.add(part)
            if _is_name(t) and not month and not day:
                stem = _stem(low)
                names.add(stem)
                prep = prev[1].lower() if prev and prev[0] == "w" and prev[1].lower() in _PREPOSITIONS else None
                if prep is None and i >= 2 and prev and prev[0] == "w" and prev[1].lower() == "the" and \
                        toks[i - 2][0] == "w" and toks[i - 2][1].lower() in _PREPOSITIONS:
                    prep = toks[i - 2][1].lower()
                b.sentence.names.append((stem, prep))
                if prep is not None:
                    b.clause.names.append((stem, prep))
            if i in consumed_units:
                continue  # the unit of a number: part of its "#dim:value" word
            unit = _unit_of(low)
            implicit = _RATE_WORDS.get(low) or (
                low if unit and unit[0] in ("time", "calendar") and prev and prev[0] == "w"
                and prev[1].lower() in _ONE_OF else None)
            if implicit:
                dim, factor = _UNITS[implicit]
                q = Quantity(factor, dim, None, 0, implicit=True)
                quantities.append(q)
                b.clause.quantities.append(q)
            if low in _STOP or len(low) < 2 or (low in _MONTHS and not month):  # "may" the verb
                continue
            stem, flipped = _canon(low)
            if stem == "drop" and not (nxt and nxt[0] == "w" and nxt[1].lower() in _DETERMINERS):
                stem, flipped = _stem(_POLE["increase"]), True  # "prices dropped", not "dropping the device"
            elif stem in ("start", "end") and prev and prev[0] == "w" and prev[1].lower() in _DETERMINERS:
                flipped = False  # "the end of March" is a point in time, not "not starting"
            b.word(stem, low, flipped)
        b.close(len(toks))
        sent = b.sentence
        for c in sent.clauses:
            all_words.update(c.words)
        sent.clauses = [c for c in sent.clauses if c.words or c.flips]
        sentences.append(sent)
    # ranges of weekdays or months ("Monday to Friday", "between April and October") name the days between
    ranges: set[tuple[str, str]] = set()
    for order in (_WEEKDAYS, _MONTHS):
        names_re = "|".join(order)
        for a, z in re.findall(rf"\b({names_re})s?\s*(?:to|through|till|until|-|{_MAX}|and)\s*({names_re})s?\b",
                               text.lower()):
            if a == z:
                continue
            ranges.add((a, z))
            ia, iz = order.index(a), order.index(z)
            span = range(ia, iz + 1) if ia <= iz else [*range(ia, len(order)), *range(iz + 1)]
            calendar.update(order[k] for k in span)
    for part, days in _WEEK_PARTS.items():
        if part in calendar:
            calendar.update(days)
        elif all(d in calendar for d in days):
            calendar.add(part)
    return Analysis(sentences, frozenset(all_words), frozenset(vocab), quantities, frozenset(names),
                    frozenset(calendar), frozenset(ranges))


def _quantity(toks: list[tuple], i: int, bound_at: dict[int, int], negs: list[int], consumed: set[int]) -> Quantity:
    """The number at toks[i] with its unit (or counted noun) and bound; marks the unit token as consumed."""
    t = toks[i]
    value, unit, kind = t[1], t[2], t[4]
    dim = noun = None
    if unit:
        dim = unit[0]
        value *= unit[1]
    else:
        for j in range(i + 1, min(i + 4, len(toks))):
            tj = toks[j]
            if tj[0] != "w":
                break
            low = tj[1].lower()
            if low in (_MIN, _MAX, _MIN_AFTER, _MAX_AFTER) or low in _NEGATIONS:
                break
            u = _unit_of(low)
            if u and not (low in ("m", "g", "h") and j > i + 1):
                dim, value = u[0], value * u[1]
                consumed.add(j)
                break
            month = _month(tj, toks[j - 1], toks[j + 1] if j + 1 < len(toks) else None)
            if month and j == i + 1 and value <= 31:
                dim = f"date:{month}"
                consumed.add(j)
                break
            if noun is None and low not in _STOP and len(low) > 1:
                noun = _canon(low)[0]
        if dim is None and kind in ("digits",) and value.is_integer() and 1000 <= value <= 2999:
            dim, noun = "year", None
        elif dim is None and i > 0 and toks[i - 1][0] == "w":
            low = toks[i - 1][1].lower()
            month = _month(toks[i - 1], toks[i - 2] if i > 1 else None, t)
            if month and value <= 31:
                dim, noun = f"date:{month}", None
            elif _unit_of(low) and low not in ("m", "g", "h"):
                u = _unit_of(low)
                dim, value, noun = u[0], value * u[1], None
        if dim is not None:
            noun = None
    if dim == "clock":
        noun = None
    bound = 0
    for j in range(i - 1, max(i - 4, -1), -1):
        if j in bound_at:
            bound = bound_at[j]
            neg = [n for n in negs if j - 3 <= n < j]
            if neg:  # "not more than", "no later than": the negation flips the bound and is used up
                bound = -bound
                negs.remove(neg[-1])
            break
        if toks[j][0] != "w":
            break
    for j in range(i + 1, min(i + 5, len(toks))):
        if toks[j][0] == "w" and toks[j][1].lower() in (_MIN_AFTER, _MAX_AFTER):
            bound = 1 if toks[j][1].lower() == _MIN_AFTER else -1
            break
        if toks[j][0] != "w":
            break
    return Quantity(round(value, 9), dim, noun, bound)


# ---- checking ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    supported: bool
    overlap: float  # share of the sentence's content words found in the passage
    reason: str | None = None  # why it is not supported

    @property
    def score(self) -> float:
        """The overlap, or 0 when a rule found a conflict."""
        return self.overlap if self.reason is None or self.reason == "low overlap" else 0.0


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _quantity_problem(q: Quantity, passage: Analysis) -> str | None:
    if q.implicit:  # "per month", "a week": needs the passage to say the same amount of that unit, if any
        same_dim = [p for p in passage.quantities if p.dim == q.dim]
        if same_dim and not any(_same(p.value, q.value) for p in same_dim):
            return f"number: a rate per {q.value:g} {q.dim} units where the passage has {same_dim[0].value:g}"
        return None
    candidates = [p for p in passage.quantities if _same(p.value, q.value) and
                  (p.dim == q.dim or q.dim is None or (p.dim is None and q.dim in ("year",)))]
    if q.dim is None and q.noun is not None:
        counted = [p for p in passage.quantities if p.noun == q.noun]
        same_noun = [p for p in candidates if p.noun == q.noun]
        if counted and not same_noun:
            return f"number: {q.value:g} {q.noun} (the passage counts {counted[0].value:g})"
    if not candidates:
        what = f"{q.value:g}" + (f" ({q.dim})" if q.dim else "")
        return f"number: {what} is not in the passage"
    if q.bound and all(p.bound == -q.bound for p in candidates):
        return f"bound: {'at least' if q.bound > 0 else 'at most'} {q.value:g} where the passage has the opposite"
    return None


def _prefix_flips(words: list[str], surface: list[str], other: set[str]) -> tuple[list[str], int]:
    """'unpaid' against 'paid': the prefixed word reads as "not" the word the other side uses."""
    out: list[str] = []
    flips = 0
    for w, s in zip(words, surface, strict=True):
        if w not in other:
            for pre in ("non", "un", "in", "im", "il", "ir", "dis"):
                if s.startswith(pre) and len(s) - len(pre) >= 3:
                    base = _canon(s[len(pre):])[0]
                    if base in other:
                        w, flips = base, flips + 1
                        break
        out.append(w)
    return out, flips


def _best_clause(claim: Clause, passage: Analysis) -> tuple[Clause | None, Sentence | None, float]:
    want = set(claim.words)
    best, best_sent, best_key = None, None, (0.0, 0, 0)
    for sent in passage.sentences:
        for c in sent.clauses:
            have = set(c.words)
            words, _ = _prefix_flips(claim.words, claim.surface, have)
            hits = len(set(words) & have)
            key = (hits / len(want) if want else 0.0, hits, -len(have))
            if key > best_key:
                best, best_sent, best_key = c, sent, key
    return best, best_sent, best_key[0]


def _polarity_problem(claim: Clause, passage: Analysis) -> str | None:
    if not claim.words:
        return None
    best, _, share = _best_clause(claim, passage)
    if best is None or share < 0.5 or len(set(claim.words) & set(best.words)) < 1:
        return None
    claim_words, claim_pre = _prefix_flips(claim.words, claim.surface, set(best.words))
    pass_words, pass_pre = _prefix_flips(best.words, best.surface, set(claim.words))
    shared = set(claim_words) & set(pass_words)
    # compared only when some negation or opposite bears on a word both clauses have ("The Treaty of Utrecht"
    # says nothing about the "ended" of the passage's clause)
    relevant = claim_pre or pass_pre or any(sc in shared for sc in claim.scopes + best.scopes)
    if relevant and (claim.flips + claim_pre) % 2 != (best.flips + pass_pre) % 2:
        return "negation: the passage says the opposite"
    for q in claim.quantities:
        same = [p for p in best.quantities if _same(p.value, q.value) and p.dim == q.dim]
        if q.bound and same and all(p.bound == -q.bound for p in same):
            return f"bound: {'at least' if q.bound > 0 else 'at most'} {q.value:g} where the passage has the opposite"
    universal = claim.quantifiers & _UNIVERSAL
    if universal and best.quantifiers & _RESTRICTIVE and not universal & best.quantifiers:
        return f"quantifier: '{sorted(universal)[0]}' where the passage restricts"
    return None


def _name_problem(sent: Sentence, claim: Analysis, passage: Analysis) -> str | None:
    for stem, _ in sent.names:
        if stem not in passage.names and stem not in passage.vocab:
            return f"name: '{stem}' is not in the passage"
    # a name in the same slot as a different name of the passage: "founded in Amsterdam" against "founded ... in
    # Rotterdam", "Priya Nair served as chief executive" against "Maria Lopez served as chief executive"
    known = claim.names | passage.names

    def names(c: Clause) -> list[tuple[str, str]]:
        return [(n, "^" if slot == "^1" else slot) for n, slot in c.names if slot != "^1" or n in known]

    for clause in sent.clauses:
        best, _, share = _best_clause(clause, passage)
        if best is None or share < 0.5:
            continue
        theirs = names(best)
        there = {n for n, _ in theirs}
        for stem, slot in names(clause):
            if stem in there:
                continue
            rivals = [n for n, s in theirs if s == slot and n not in claim.names and n not in claim.vocab]
            if rivals:
                return f"name: '{stem}' where the passage has '{rivals[0]}'"
    return None


def check(sentence: str, passage: str) -> Verdict:
    """Whether `passage` supports `sentence`: word overlap plus the number, date, negation and name rules."""
    claim, ctx = analyse(sentence), analyse(passage)
    if not claim.words:
        return Verdict(False, 0.0, "no content words")
    overlap = len(claim.words & ctx.words) / len(claim.words)
    for q in (q for s in claim.sentences for c in s.clauses for q in c.quantities):
        problem = _quantity_problem(q, ctx)
        if problem:
            return Verdict(False, overlap, problem)
    missing = claim.calendar - ctx.calendar
    if missing:
        return Verdict(False, overlap, f"date: '{sorted(missing)[0]}' is not in the passage")
    for first, last in claim.ranges - ctx.ranges:  # "from May to October" against "from April to October"
        if any(first == a or last == z for a, z in ctx.ranges):
            return Verdict(False, overlap, f"date: {first} to {last} is not the passage's range")
    for sent in claim.sentences:
        problem = _name_problem(sent, claim, ctx)
        if problem:
            return Verdict(False, overlap, problem)
        for clause in sent.clauses:
            problem = _polarity_problem(clause, ctx)
            if problem:
                return Verdict(False, overlap, problem)
    if overlap < SUPPORT:
        return Verdict(False, overlap, "low overlap")
    return Verdict(True, overlap)


def supported_by_any(sentence: str, passages: list[str] | tuple[str, ...]) -> bool:
    return any(check(sentence, p).supported for p in passages)
