"""Guardrails on requests and answers: personal data, prompt injection, denied topics, JSON answers.

Each check has an action per alias: `log` records the hit (metrics + request log), `redact` replaces
personal data with the data stage's placeholders (same Presidio setup as training, so the model sees
the same `<EMAIL>` tags it was trained on), `block` refuses with an OpenAI-style error.

Every input check runs even after one has decided to block, so all hits are recorded, and a refused text
comes back with its personal data redacted: the request log must not keep what the guard refused.

The injection and topic checks are best-effort keyword matching, not a security boundary: they stop the common
phrasings and their cheap disguises, never a determined attacker (paraphrase, other languages than English,
French, German and Spanish, other encodings). What they match is a normalised view of the text, so the disguises
cost nothing to see through: NFKC, zero-width and other invisible format characters dropped, accents dropped,
Cyrillic/Greek look-alikes mapped to Latin, letter-spacing ("i g n o r e", "i.g.n.o.r.e") collapsed, and base64,
HTML-entity and %-encoded runs decoded and checked too. The text passed on is always the caller's own.
Denied topics apply to answers as well, and `check_passages` flags retrieved passages that carry instructions
aimed at the model (indirect injection), so they can be dropped before the prompt is built.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from llmtailor.errors import TailorError
from llmtailor.serve.config import GuardrailConfig

# ---------------------------------------------------------------- normalisation

# Look-alikes (Cyrillic, Greek, a few Latin variants) -> the Latin letter they imitate; applied before lower-casing
# (upper- and lower-case forms imitate different letters: Greek Η is H, η is n).
_CONFUSABLES = str.maketrans({
    **dict(zip("АВЕЅІЈКМНОРСТУХҮҺԚԜӀ", "abesijkmhopctyxyhqwl", strict=True)),
    **dict(zip("авеѕіјкмнорстухүһԛԝӏԁ", "abesijkmhopctyxyhqwld", strict=True)),
    **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "abezhikmnoptyx", strict=True)),
    **dict(zip("αβεικνορτυχγηωςϲϳ", "abeiknoptuxynwscj", strict=True)),
    **dict(zip("ıȷɡօսհ", "ijgouh", strict=True)),
    **dict.fromkeys("\u2018\u2019\u02bc\u0060\u00b4", "'"),
})
# Characters that render as nothing but are not format characters (Cf): the Hangul fillers. (Combining marks such
# as the grapheme joiner or variation selectors are dropped with the accents.)
_INVISIBLE = {"\u115f", "\u1160", "\u3164", "\uffa0"}
_LETTER = r"[^\W\d_]"
# Letter-spacing: three or more single letters each separated by one space or punctuation mark ("i g n o r e").
_SPACED = re.compile(rf"(?<!\w){_LETTER}(?:[ .\-_*|+~/\\·,:;][{_LETTER[1:-1]}](?!\w)){{2,}}")
_SEP = re.compile(r"[^\w]|_")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_B64_BLOCK = re.compile(r"(?m)^(?:[A-Za-z0-9+/_-]{8,}={0,2}[ \t]*\r?\n)+[A-Za-z0-9+/_-]{4,}={0,2}[ \t]*$")
_MAX_DEPTH = 2  # base64 inside base64 inside the text, no deeper
_WINDOW = 60  # characters around a letter-spaced run that are also read with all spacing removed


def _visible(text: str) -> str:
    """NFKC, without format characters (zero-width, soft hyphen, bidi controls, tags) and invisible fillers."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf" and ch not in _INVISIBLE)


def _base(text: str) -> str:
    """Visible text, accents dropped, look-alikes mapped to Latin, lower-cased (whitespace kept as is)."""
    text = unicodedata.normalize("NFKD", _visible(text))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return text.translate(_CONFUSABLES).lower()


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _unspace(text: str) -> tuple[str, list[str]]:
    """Letter-spaced runs joined into words, and the letters-only form of each run's neighbourhood."""
    spans: list[tuple[int, int]] = []

    def join(m: re.Match[str]) -> str:
        spans.append((m.start(), m.end()))
        return _SEP.sub("", m.group(0))

    joined = _SPACED.sub(join, text)
    around = [_SEP.sub("", text[max(0, a - _WINDOW) : b + _WINDOW]) for a, b in spans if b - a >= 7]
    return joined, around


def normalize(text: str) -> str:
    """The form the keyword checks read: see the module docstring (no decoding of encoded runs here)."""
    return _collapse(_unspace(_base(text))[0])


def _decode_b64(run: str) -> list[str]:
    """The text pieces a base64 run decodes to: stretches of printable UTF-8 (8+ characters, mostly letters)."""
    run = re.sub(r"\s+", "", run).rstrip("=")
    urlsafe = "-" in run or "_" in run
    if urlsafe and ("+" in run or "/" in run):
        return []
    pieces: list[str] = []
    for skip in range(4):  # a run glued to a word ("followaWdub3Jl..."): one of four alignments decodes the rest
        body = run[skip:]
        if len(body) < 12 or len(body) % 4 == 1:
            continue
        try:
            raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_" if urlsafe else None, validate=True)
        except (binascii.Error, ValueError):
            continue
        text = raw.decode("utf-8", errors="replace")
        text = "".join(ch if ch.isprintable() and ch != "\ufffd" else "\n" for ch in text)
        pieces += [p for p in text.split("\n") if len(p) >= 8 and sum(ch.isalpha() for ch in p) >= 0.5 * len(p)]
    return pieces


def _decoded(text: str) -> tuple[list[str], list[str]]:
    """Texts hidden in `text`: (what its base64 runs decode to, the text with HTML entities / %-escapes resolved)."""
    visible = _visible(text)
    runs = [m.group(0) for m in _B64_BLOCK.finditer(visible)] + [m.group(0) for m in _B64_RUN.finditer(visible)]
    pieces = [piece for run in runs for piece in _decode_b64(run)]
    unescaped = [u for u in (html.unescape(visible), unquote(visible)) if u != visible]
    return pieces, unescaped


@dataclass
class _Views:
    """What the keyword checks read for one text: whole-text forms, and letters-only forms (the neighbourhoods of
    letter-spacing, and decoded base64, whose word boundaries may be lost to the bytes of a word glued to it)."""

    texts: list[str]
    squashed: list[str]

    def add(self, other: _Views) -> None:
        self.texts += other.texts
        self.squashed += other.squashed


def _views(text: str, depth: int = 0) -> _Views:
    base = _base(text)
    joined, around = _unspace(base)
    views = _Views([_collapse(base)], around)
    if joined != base:
        views.texts.append(_collapse(joined))
    if depth < _MAX_DEPTH:
        pieces, unescaped = _decoded(text)
        if pieces:
            hidden = ".\n".join(pieces)  # gaps in the patterns never cross a sentence: two runs are not read as one
            views.add(_views(hidden, depth + 1))
            views.squashed += [_SEP.sub("", _base(p)) for p in pieces]
        for u in unescaped:
            views.add(_views(u, depth + 1))
    return views


# ---------------------------------------------------------------- patterns

# Phrasings common to prompt-injection and jailbreak attempts, matched on the normalised text (lower case, no
# accents). Several patterns may share a name (one per language); a name is reported once. Quantifiers are bounded
# so that a hostile text cannot make matching slow.
_FR_VERB = r"(ignor\w{0,4}|oubli\w{0,4}|neglig\w{0,4}|faites abstraction|fais abstraction|ne tiens pas compte|" \
           r"ne tenez pas compte)"
_FR_QUAL = r"(toute?s?|tous|tes|vos|ton|votre|precedente?s?|anterieure?s?|ci-dessus|initiale?s?|du systeme|systeme)"
_FR_NOUN = r"(instructions?|consignes?|regles|directives|indications|prompts?|ordres)"
_DE_VERB = r"(ignorier\w{0,3}|vergiss|vergessen sie|missacht\w{0,3}|uberschreib\w{0,3})"
_DE_QUAL = r"(alle[nms]?|vorherige[nmrs]?|vorige[nmrs]?|obige[nmrs]?|bisherige[nmrs]?|deine[nmrs]?|fruhere[nmrs]?|" \
           r"vorangegangene[nmrs]?|system)"
_DE_NOUN = r"(anweisungen|instruktionen|befehle|regeln|vorgaben|richtlinien|prompts?|systemprompt)"
_ES_VERB = r"(ignor\w{0,4}|olvid\w{0,4}|omit\w{0,4}|descart\w{0,4}|haz caso omiso|hagan caso omiso|no hagas caso)"
_ES_QUAL = r"(todas?|todos|tus|sus|anteriore?s?|previas?|precedentes?|de arriba|iniciales|del sistema)"
_ES_NOUN = r"(instrucciones|indicaciones|reglas|directrices|ordenes|prompts?|normas)"


def _either(verb: str, qual: str, noun: str) -> str:
    """verb ... (qualifier ... noun | noun ... qualifier): French and Spanish put the adjective on either side.
    A negated verb ("n'oubliez pas", "no olvides": do not forget the rules) is advice, not an attack."""
    either = rf"({qual}\b.{{0,20}}\b{noun}|{noun}\b.{{0,20}}\b{qual})"
    return rf"(?<!\bno )\b{verb}\b(?! pas\b| jamais\b).{{0,40}}\b{either}\b"


_INJECTION = [
    ("ignore-instructions", r"(?<!\bdon't )(?<!\bdo not )(?<!\bnever )\b(ignore|disregard|forget|override)\b.{0,40}"
                            r"\b(previous|prior|above|earlier|preceding|all|your|the system)\b.{0,20}"
                            r"\b(instructions?|prompts?|rules|directions|guidelines)\b"),
    ("ignore-instructions", _either(_FR_VERB, _FR_QUAL, _FR_NOUN)),
    ("ignore-instructions", rf"\b{_DE_VERB}\b(?! nicht\b| niemals\b).{{0,40}}\b{_DE_QUAL}\b.{{0,20}}\b{_DE_NOUN}\b"),
    ("ignore-instructions", _either(_ES_VERB, _ES_QUAL, _ES_NOUN)),
    ("reveal-system-prompt", r"\b(reveal|show|print|repeat|tell me|output|leak)\b.{0,30}\b(system prompt|"
                             r"hidden (prompt|instructions)|initial instructions|your instructions)\b"),
    ("reveal-system-prompt", r"\b(revel\w{0,4}|montre\w{0,4}|affiche\w{0,4}|repete\w{0,4}|donne\w{0,4}|dis|dites|"
                             r"divulgu\w{0,4}|imprim\w{0,4}|ecri\w{0,4})\b.{0,30}\b(prompt (du )?systeme|"
                             r"(instructions|consignes) (initiales|cachees|secretes|du systeme)|(tes|vos) "
                             r"(instructions|consignes))\b"),
    ("reveal-system-prompt", r"\b(zeig\w{0,3}|verrat\w{0,3}|gib|nenn\w{0,3}|wiederhol\w{0,3}|offenbar\w{0,3}|"
                             r"druck\w{0,3})\b.{0,30}\b(system-?prompt|systemanweisung\w{0,2}|(versteckten|geheimen|"
                             r"ursprunglichen|internen) (anweisungen|instruktionen)|"
                             r"deine (anweisungen|instruktionen))\b"),
    ("reveal-system-prompt", r"\b(revel\w{0,4}|muestr\w{0,4}|ensen\w{0,4}|dime|dinos|repit\w{0,4}|imprim\w{0,4}|"
                             r"escrib\w{0,4})\b.{0,30}\b(prompt (del|de) sistema|instrucciones (del sistema|ocultas|"
                             r"secretas|iniciales)|tus instrucciones)\b"),
    ("roleplay-jailbreak", r"\b(you are now|act as|pretend (to be|you are)|from now on you)\b.{0,40}\b(dan|"
                           r"jailbr(oken|eak)|unfiltered|uncensored|no (restrictions|rules|limits)|evil)\b"),
    ("roleplay-jailbreak", r"\b(tu es maintenant|vous etes maintenant|fais comme si|faites comme si|agis comme|"
                           r"agissez comme|joue le role|jouez le role|a partir de maintenant)\b.{0,40}\b(dan|"
                           r"jailbreak\w{0,4}|sans (aucune )?(restrictions?|regles|limites|filtres?|censure)|"
                           r"non censure\w{0,2}|malveillant\w{0,2})\b"),
    ("roleplay-jailbreak", r"\b(du bist jetzt|sie sind jetzt|tu so als|tue so als|ab jetzt bist du|spiele? die rolle)"
                           r"\b.{0,40}\b(dan|jailbreak\w{0,4}|ohne (jegliche )?(einschrankungen|regeln|grenzen|filter|"
                           r"zensur)|unzensiert\w{0,2}|bose)\b"),
    ("roleplay-jailbreak", r"\b(ahora eres|a partir de ahora eres|finge que eres|finge ser|actua como)\b.{0,40}\b(dan|"
                           r"jailbreak\w{0,4}|sin (ninguna )?(restricciones|reglas|limites|filtros|censura)|"
                           r"malvad\w{0,2})\b"),
    ("developer-mode", r"\b((developer|god|sudo|admin) mode|mode (developpeur|dieu|admin|administrateur|sudo)|"
                       r"(entwickler|gott|admin)-?modus|modo (desarrollador|dios|admin|administrador))\b"),
    ("do-anything-now", r"\bdo anything now\b"),
    ("no-restrictions", r"\b(without (any )?(restrictions|filters|censorship|safety)|sans (aucune )?censure|"
                        r"ohne (jegliche )?zensur|sin (ninguna )?censura)\b"),
]
# Only for retrieved passages (indirect injection): text addressed to the model rather than to a reader.
_PASSAGE = [
    ("chat-template-tokens", r"<\|(im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|"
                             r"end_header_id)\|>|\[/?inst\]|<</?sys>>"),
    ("addressed-to-the-model", r"\b(note|message|instructions?|attention)\b.{0,15}\b(to|for)\b.{0,10}\b(the |any )?"
                               r"(ai|ai assistant|assistant|chatbot|llm|language model|model)\b\s*[:,!-]"),
    ("addressed-to-the-model", r"\b(if|when) you are (an? )?(ai|assistant|language model|llm|chatbot)\b"),
    ("new-instructions", r"\b(new|updated|real|actual|revised) (system )?(instructions?|prompt)\s*:"),
]


def _squashed(pattern: str) -> str:
    """The pattern for letters-only text (spacing removed): no word boundaries, no spaces, gaps of letters only."""
    out = pattern.replace(r"\b", "").replace(" ", "").replace(r"\w{", "[a-z]{").replace(".{0,", "[a-z]{0,")
    return out.replace("-?", "")


def _compile(patterns: list[tuple[str, str]]) -> list[tuple[str, re.Pattern[str], re.Pattern[str]]]:
    """(name, pattern for whole text, pattern for letters-only text); in whole text a gap never crosses the end of
    a sentence ("If you forget your PIN. The instructions are..." is two sentences, not one request)."""
    return [(name, re.compile(p.replace(".{0,", r"[^.?!\n]{0,")), re.compile(_squashed(p))) for name, p in patterns]


INJECTION_PATTERNS = _compile(_INJECTION)
PASSAGE_PATTERNS = _compile(_PASSAGE)


def _hits(views: _Views, patterns: list[tuple[str, re.Pattern[str], re.Pattern[str]]]) -> list[str]:
    found: list[str] = []
    for name, whole, squashed in patterns:
        if name in found:
            continue
        if any(whole.search(t) for t in views.texts) or any(squashed.search(t) for t in views.squashed):
            found.append(name)
    return found


@dataclass
class Verdict:
    """The texts to pass on (redacted for `redact`; for `block`, the redacted texts to log), what was found,
    and the reason if the request must be refused (the first check that blocked)."""

    texts: list[str]
    hits: list[dict[str, Any]] = field(default_factory=list)
    blocked: str | None = None

    def hit(self, check: str, action: str, found: Any, reason: str) -> None:
        """Record a hit; a blocking action refuses (the first reason is kept)."""
        self.hits.append({"check": check, "action": action, "found": found})
        if action == "block" and self.blocked is None:
            self.blocked = reason


def injection_hits(text: str) -> list[str]:
    """Names of the injection patterns found in `text` (any of its normalised or decoded forms)."""
    return _hits(_views(text), INJECTION_PATTERNS)


def passage_hits(text: str) -> list[str]:
    """Injection patterns plus the passage-only ones (chat-template tokens, notes addressed to the model)."""
    return _hits(_views(text), INJECTION_PATTERNS + PASSAGE_PATTERNS)


def topic_hits(text: str, topics: list[str]) -> list[str]:
    """The denied topics (as configured) that `text` mentions, in any of its normalised or decoded forms."""
    return _topics(_views(text), topics) if topics else []


def _topics(views: _Views, topics: list[str]) -> list[str]:
    found = []
    for topic in topics:
        words = _collapse(_base(topic)).split()
        if not words:
            continue
        pat = re.compile(r"(?<!\w)" + r"[\s\-_]*".join(re.escape(w) for w in words) + r"(?!\w)")
        letters = _SEP.sub("", "".join(words))
        if any(pat.search(t) for t in views.texts) or (
            len(letters) >= 5 and any(letters in t for t in views.squashed)
        ):
            found.append(topic)
    return found


def check_passages(texts: list[str], cfg: GuardrailConfig) -> list[int]:
    """Indexes of retrieved passages that carry instructions for the model (indirect prompt injection).

    A document anyone could edit must not steer the answer: the caller drops the flagged passages before the
    prompt is built and records one `passage_injection` hit with their count. Nothing is checked (and nothing
    flagged) when the alias's `injection` check is off.
    """
    if cfg.injection == "off":
        return []
    return [i for i, text in enumerate(texts) if passage_hits(text)]


def output_checks_enabled(cfg: GuardrailConfig) -> bool:
    """Whether `check_output` has anything to do for this alias (denied topics apply to answers too)."""
    return cfg.output_pii != "off" or cfg.output_json != "off" or bool(cfg.deny_topics)


def _pii(texts: list[str], pii_cfg: Any) -> tuple[list[str], dict[str, int]]:
    from llmtailor.data.redact import redact_texts

    out, counts = redact_texts(texts, pii_cfg)
    return out, dict(counts)


def check_input(texts: list[str], cfg: GuardrailConfig, pii_cfg: Any) -> Verdict:
    """Check the caller's texts (every turn it sent; an alias's own system prompt is the operator's, not checked)."""
    v = Verdict(list(texts))
    views = _views("\n".join(texts)) if cfg.injection != "off" or cfg.deny_topics else None
    if views is not None and cfg.injection != "off" and (found := _hits(views, INJECTION_PATTERNS)):
        v.hit("injection", cfg.injection, found, "the request looks like a prompt-injection or jailbreak attempt")
    if views is not None and cfg.deny_topics and (found := _topics(views, cfg.deny_topics)):
        v.hit("deny_topic", cfg.deny_action, found, "the request is about a topic this assistant does not discuss")
    if cfg.input_pii != "off":
        _check_pii(v, "input_pii", cfg.input_pii, pii_cfg, "the request contains personal data")
    return v


def check_output(text: str, cfg: GuardrailConfig, pii_cfg: Any, schema: dict | None) -> Verdict:
    """Check a finished answer: personal data, denied topics (a model can bring them up unasked, or be steered
    there by a retrieved passage) and, when asked, JSON validity against the schema."""
    v = Verdict([text])
    if cfg.output_pii != "off":
        _check_pii(v, "output_pii", cfg.output_pii, pii_cfg, "the answer contained personal data")
        if v.blocked:
            return v
    if cfg.deny_topics and (found := topic_hits(v.texts[0], cfg.deny_topics)):
        v.hit("deny_topic", cfg.deny_action, found, "the answer is about a topic this assistant does not discuss")
        if v.blocked:
            return v
    if cfg.output_json != "off" and (problem := json_problem(v.texts[0], schema)):
        v.hit("output_json", cfg.output_json, problem, f"the answer failed the JSON check ({problem})")
    return v


def _check_pii(v: Verdict, check: str, action: str, pii_cfg: Any, reason: str) -> None:
    """Presidio over the verdict's texts; `redact` and `block` keep the redacted texts (`log` keeps them as sent)."""
    redacted, counts = _pii(v.texts, pii_cfg)
    if not counts:
        return
    v.hit(check, action, counts, f"{reason} ({', '.join(sorted(counts))})")
    if action in ("redact", "block"):
        v.texts = redacted


def json_problem(text: str, schema: dict | None) -> str | None:
    """None when text parses (and matches schema), else a short reason."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not JSON: {e.msg}"
    if schema:
        import jsonschema

        try:
            jsonschema.validate(obj, schema)
        except jsonschema.ValidationError as e:
            return f"schema: {e.message}"
    return None


def load_schema(path: Path | None) -> dict | None:
    """The alias's `json_schema`, checked at startup: a bad schema must not turn every answer into a 500."""
    if path is None:
        return None
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TailorError(f"guardrails.json_schema: cannot read {path}: {e}") from e
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise TailorError(f"guardrails.json_schema: {path} is not a valid JSON Schema: {e.message}") from e
    return schema
