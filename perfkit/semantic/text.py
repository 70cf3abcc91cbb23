"""Text handling for the semantic cache: normalisation (for the exact-match stage), the
tokens the default embedder hashes, and the lexical guard.

The guard exists because similarity alone cannot tell "enable" from "disable", 15 % from
20 % or France from Germany: those pairs share almost every n-gram. After a vector match,
the guard refuses the hit unless both prompts agree on numbers, negation, polarity words
and named entities. It is deliberately conservative: a refused paraphrase costs one LLM
call, a wrong hit serves a wrong answer.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# A token: a word (letters, with digits allowed: "S24", "3rd", "ABC123"), with an inner
# apostrophe and trailing +/# ("C++", "C#"), or a number (sign, separators, percent).
_TOKEN = re.compile(
    r"[^\W_]*[^\W\d_][^\W_]*(?:['\u2019][^\W_]+)*[+#]*"
    r"|(?<![\w.])-?\d+(?:[.,]\d+)*%?"
)
_QUOTED = re.compile(
    r"(?<!\w)[\"\u201c\u2018']([^\"\u201c\u201d\u2018\u2019']{2,80})[\"\u201d\u2019'](?!\w)"
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
# Arithmetic and comparison operators, unless inside a word ("two-factor", "and/or"):
# "5+3" and "5-3" must never normalise to the same text.
_OPERATOR = re.compile(
    r"(?<![^\W\d_])(?:==|!=|<=|>=|\*\*|->|[-+*/=<>^\u00d7\u00f7\u2260\u2264\u2265])"
    r"(?![^\W\d_])"
)
_TOKEN_OR_OPERATOR = re.compile(f"{_TOKEN.pattern}|{_OPERATOR.pattern}")

_CONTRACTIONS = {"n't": ["not"], "'re": ["are"], "'ll": ["will"], "'ve": ["have"],
                 "'m": ["am"], "'d": ["would"]}
_IS_CONTRACTIONS = frozenset({"what", "it", "that", "there", "here", "he", "she", "who",
                              "where", "when", "how", "why", "which"})
_IRREGULAR_NOT = {"can't": ["can", "not"], "won't": ["will", "not"], "cannot": ["can", "not"],
                  "shan't": ["shall", "not"]}


def _wordlist(text: str) -> list[str]:
    return text.split()


def _split_token(token: str) -> list[str]:
    if "'" not in token and "\u2019" not in token:
        return [token] if token != "cannot" else ["can", "not"]
    token = token.replace("\u2019", "'")
    if token in _IRREGULAR_NOT:
        return _IRREGULAR_NOT[token]
    for suffix, expansion in _CONTRACTIONS.items():
        if token.endswith(suffix) and len(token) > len(suffix):
            return [token[: -len(suffix)], *expansion]
    if token.endswith("'s"):
        stem = token[:-2]
        return [stem, "is"] if stem in _IS_CONTRACTIONS else [stem]
    return [token]


def _folded(text: str) -> str:
    return _THOUSANDS.sub("", unicodedata.normalize("NFKC", text).casefold())


def tokens(text: str) -> list[str]:
    """Case-folded tokens with contractions expanded and thousands separators dropped."""
    out: list[str] = []
    for raw in _TOKEN.findall(_folded(text)):
        out.extend(_split_token(raw))
    return out


def operators(text: str) -> list[str]:
    """The arithmetic/comparison operators of ``text``, in order."""
    return _OPERATOR.findall(_folded(text))


def normalize(text: str) -> str:
    """The exact-match form: case, whitespace, punctuation and contractions do not count;
    numbers, signs, operators and ``C++``-style suffixes do. A prompt with no word, number
    or operator at all (emoji, ":)") is kept as typed, whitespace aside, so two such
    prompts never collapse into the same empty key."""
    folded = _folded(text)
    out: list[str] = []
    for raw in _TOKEN_OR_OPERATOR.findall(folded):
        out.extend(_split_token(raw))
    return " ".join(out) if out else " ".join(folded.split())


STOPWORDS = frozenset(_wordlist(
    """a an the of to in on at for from by with about into onto over as and or but if then
    so than that this these those it its is are was were be been being am do does did doing
    done have has had having i me my mine we us our you your yours he him his she her they
    them their what which who whom whose how why when where there here can could would
    should will shall may might must please tell give show explain describe exactly
    actually just really some any all again way possible right now simple simply terms
    using use via want need like let get know kindly"""
))
# Kept by the embedder's stopword filter: they change the meaning, and the guard uses them.
NEGATIONS = frozenset({"not", "no", "never", "none", "nothing", "nobody", "neither", "nor",
                       "without"})


@lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    """A light suffix stripper: enough for plurals and common verb forms."""
    if len(word) <= 4 or not word.isalpha():
        return word
    for suffix in ("ations", "ation", "ings", "ing", "ies", "ers", "ed", "es", "er", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def content_words(toks: list[str]) -> list[str]:
    """Stemmed tokens minus stopwords (all tokens if nothing else is left)."""
    kept = [stem(t) for t in toks if t not in STOPWORDS]
    return kept or [stem(t) for t in toks]


# -- the lexical guard --------------------------------------------------------------------
_NUMBER_WORDS = {
    w: str(i) for i, w in enumerate(_wordlist(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty"))
}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
                      "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100",
                      "thousand": "1000", "million": "1000000", "billion": "1000000000",
                      "dozen": "12", "half": "0.5", "twice": "2x", "double": "2x",
                      "triple": "3x"})
_ORDINALS = {w: str(i) for i, w in enumerate(_wordlist(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth"))}
_ORDINAL_DIGITS = re.compile(r"^(\d+)(?:st|nd|rd|th)$")

# Pairs whose swap reverses a request while keeping nearly every n-gram.
_ANTONYMS = [
    ("increase", "decrease"), ("increase", "reduce"), ("raise", "lower"), ("more", "less"),
    ("more", "fewer"), ("max", "min"), ("maximum", "minimum"), ("largest", "smallest"),
    ("biggest", "smallest"), ("big", "small"), ("large", "small"), ("high", "low"),
    ("higher", "lower"), ("highest", "lowest"), ("best", "worst"), ("better", "worse"),
    ("add", "remove"), ("add", "delete"), ("enable", "disable"), ("encrypt", "decrypt"),
    ("encode", "decode"), ("buy", "sell"), ("upload", "download"), ("import", "export"),
    ("start", "stop"), ("open", "close"), ("open", "closed"), ("before", "after"),
    ("first", "last"), ("lose", "gain"), ("win", "lose"), ("cheap", "expensive"),
    ("positive", "negative"), ("true", "false"), ("above", "below"), ("in", "out"),
    ("up", "down"), ("on", "off"), ("hot", "cold"), ("read", "write"), ("push", "pull"),
    ("input", "output"), ("min", "max"), ("early", "late"), ("earliest", "latest"),
    ("oldest", "newest"), ("old", "new"), ("accept", "reject"), ("allow", "deny"),
    ("allow", "block"), ("include", "exclude"), ("connect", "disconnect"),
    ("subscribe", "unsubscribe"), ("join", "leave"), ("login", "logout"),
    ("sign", "unsign"), ("yesterday", "tomorrow"), ("shorter", "longer"),
    ("short", "long"), ("fast", "slow"), ("faster", "slower"), ("with", "without"),
    ("legal", "illegal"), ("safe", "unsafe"), ("north", "south"), ("east", "west"),
    ("left", "right"), ("import", "export"), ("pros", "cons"), ("advantage", "disadvantage"),
]
_OPPOSITE: dict[str, set[str]] = {}
for _a, _b in _ANTONYMS:
    _OPPOSITE.setdefault(_a, set()).add(_b)
    _OPPOSITE.setdefault(_b, set()).add(_a)
_NEGATING_PREFIXES = ("un", "in", "il", "im", "ir", "dis", "non", "de")

_COMMON_CAPITALISED = STOPWORDS | frozenset(_wordlist(
    """write list summarize summarise translate recommend suggest compare calculate convert
    book order set reserve find create make help is are do does can could will would should
    who what when where why how which explain describe tell give show please hi hello hey
    i"""
))


# Interrogatives: "when" and "where" share every other word of a question but not its
# answer. "which" asks what "what" asks; "what time" asks "when".
_QUESTION_WORDS = {"who": "who", "whom": "who", "whose": "whose", "what": "what",
                   "which": "what", "when": "when", "where": "where", "why": "why",
                   "how": "how"}
# Words that make the order of their neighbours matter: "Boston to Chicago",
# "Python faster than Java", "Celsius in Fahrenheit".
_CONNECTORS = frozenset({"to", "into", "onto", "than", "from", "in", "vs", "versus", "per"})


def _questions(toks: list[str]) -> set[str]:
    found = set()
    for i, t in enumerate(toks):
        kind = _QUESTION_WORDS.get(t)
        if kind == "what" and i + 1 < len(toks) and toks[i + 1] == "time":
            kind = "when"
        if kind is not None:
            found.add(kind)
    return found


def _ordered_pairs(toks: list[str]) -> set[tuple[str, str, str]]:
    """(connector, x, y) for content words x before and y after the connector, at most
    two content words away from it on each side."""
    content = [(i, stem(t)) for i, t in enumerate(toks)
               if t not in STOPWORDS and t not in _CONNECTORS and t not in NEGATIONS]
    pairs: set[tuple[str, str, str]] = set()
    for c, t in enumerate(toks):
        if t in _CONNECTORS:
            before = [w for i, w in content if i < c][-2:]
            after = [w for i, w in content if i > c][:2]
            pairs.update((t, x, y) for x in before for y in after if x != y)
    return pairs


def _numbers(toks: list[str]) -> set[str]:
    found: set[str] = set()
    for t in toks:
        if t[0].isdigit() or (t[0] == "-" and len(t) > 1):
            found.add(t.rstrip("%") + ("%" if t.endswith("%") else ""))
        elif t in _NUMBER_WORDS:
            found.add(_NUMBER_WORDS[t])
        elif t in _ORDINALS:
            found.add("#" + _ORDINALS[t])
        else:
            m = _ORDINAL_DIGITS.match(t)
            if m:
                found.add("#" + m.group(1))
            elif any(c.isdigit() for c in t):
                found.add(t)  # "S24", "ABC123", "3.11": identifiers with digits
    return found


def _entities(text: str) -> set[str]:
    """Proper names and identifiers: capitalised words (the first word too unless it is a
    common sentence starter), acronyms, mixed case, and quoted phrases."""
    found: set[str] = set()
    words = re.findall(r"[^\W_][\w+#.'\u2019-]*", unicodedata.normalize("NFKC", text))
    for i, raw in enumerate(words):
        word = raw.rstrip(".'\u2019-")
        if not word or not any(c.isupper() for c in word):
            continue
        folded = word.casefold()
        base = _split_token(folded)[0]
        if i == 0 and base in _COMMON_CAPITALISED and not word.isupper():
            continue
        if word.isupper() and len(word) == 1:
            continue  # "I", "A"
        found.add(base)
    for phrase in _QUOTED.findall(text):
        found.add(normalize(phrase))
    return found


def guard_conflict(a: str, b: str) -> str | None:
    """Why the two prompts must not share an answer, or ``None`` if nothing disagrees.

    Reasons: ``numbers`` (different numbers, ordinals or identifiers), ``operator``
    (different arithmetic or comparison operators), ``negation`` (one prompt negates, the
    other does not), ``question`` (different question words: when vs where), ``polarity``
    (an antonym or negating prefix swap), ``direction`` (the same two words swapped around
    "to", "than", "in"...), ``entity`` (a name in one prompt is missing from the other).
    """
    ta, tb = tokens(a), tokens(b)
    if _numbers(ta) != _numbers(tb):
        return "numbers"
    if sorted(operators(a)) != sorted(operators(b)):
        return "operator"
    neg_a = sum(t in NEGATIONS for t in ta)
    neg_b = sum(t in NEGATIONS for t in tb)
    if (neg_a > 0) != (neg_b > 0):
        return "negation"
    qa, qb = _questions(ta), _questions(tb)
    if qa and qb and not qa & qb:
        return "question"
    sa, sb = set(ta), set(tb)
    only_a, only_b = sa - sb, sb - sa
    for word in only_a:
        opposite = _OPPOSITE.get(word)
        if opposite and opposite & only_b:
            return "polarity"
        for prefix in _NEGATING_PREFIXES:
            if prefix + word in only_b or (word.startswith(prefix) and word[len(prefix):] in
                                           only_b):
                return "polarity"
    pairs_a, pairs_b = _ordered_pairs(ta), _ordered_pairs(tb)
    for c, x, y in pairs_a - pairs_b:
        if (c, y, x) in pairs_b and (c, y, x) not in pairs_a:
            return "direction"
    norm_a, norm_b = " " + " ".join(ta) + " ", " " + " ".join(tb) + " "
    for entity in _entities(a):
        if f" {normalize(entity)} " not in norm_b:
            return "entity"
    for entity in _entities(b):
        if f" {normalize(entity)} " not in norm_a:
            return "entity"
    return None
