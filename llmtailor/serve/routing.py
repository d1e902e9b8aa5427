"""Routing aliases: pick the alias or model that answers a request, by rules on the request or by meaning.

Rules are checked in order and the first whose conditions all hold wins; then the classifier (nearest labelled
example prompt, embedded with the server's RAG embedder); then the route's default. A target may itself route
(config validation rules out cycles), so `Router.follow` walks hops until a plain alias or model name.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtailor.serve.config import AliasConfig, RouteClassifier, RouteConfig, RouteRule


@dataclass
class RouteInput:
    """What the rules look at; the prompt is only tokenized if a rule asks for its length."""

    last_user: str
    wants_json: bool
    count_tokens: Callable[[], int]
    _tokens: int | None = field(default=None, repr=False)

    @property
    def prompt_tokens(self) -> int:
        if self._tokens is None:
            self._tokens = self.count_tokens()
        return self._tokens


def rule_matches(rule: RouteRule, req: RouteInput) -> bool:
    """Every condition the rule sets holds for the request."""
    if rule.response_format is not None and (rule.response_format == "json") != req.wants_json:
        return False
    if rule.contains_any:
        text = req.last_user.casefold()
        if not any(word.casefold() in text for word in rule.contains_any):
            return False
    if rule.regex is not None and re.search(rule.regex, req.last_user) is None:
        return False
    if rule.min_prompt_tokens is not None and req.prompt_tokens < rule.min_prompt_tokens:
        return False
    return rule.max_prompt_tokens is None or req.prompt_tokens <= rule.max_prompt_tokens


class ExampleClassifier:
    """Nearest labelled example by cosine similarity; the examples are embedded once."""

    def __init__(self, cfg: RouteClassifier, embedder: Any):
        self.cfg = cfg
        self.embedder = embedder
        self.labels: list[str] = []
        texts: list[str] = []
        for target, examples in cfg.examples.items():
            for ex in examples:
                if ex.strip():
                    self.labels.append(target)
                    texts.append(ex)
        self.matrix = np.asarray(embedder.embed(texts), dtype=np.float32)

    def predict(self, text: str) -> tuple[str, float]:
        """(target of the most similar example, its similarity)."""
        q = np.asarray(self.embedder.embed_query(text), dtype=np.float32)
        sims = self.matrix @ q
        best = int(np.argmax(sims))
        return self.labels[best], float(sims[best])


class Router:
    """Decisions for every routing alias of a server; classifiers load lazily (the embedder may be heavy)."""

    def __init__(self, aliases: dict[str, AliasConfig], embedder: Callable[[], Any]):
        self.aliases = aliases
        self._embedder = embedder
        self._classifiers: dict[str, ExampleClassifier] = {}
        self._lock = threading.Lock()

    def routes(self, name: str) -> bool:
        alias = self.aliases.get(name)
        return alias is not None and alias.route is not None

    def classifier(self, name: str, cfg: RouteClassifier) -> ExampleClassifier:
        with self._lock:
            if name not in self._classifiers:
                self._classifiers[name] = ExampleClassifier(cfg, self._embedder())
            return self._classifiers[name]

    def decide(self, name: str, req: RouteInput) -> tuple[str, str]:
        """(target, reason) for one routing alias; reason is 'rule-N' (1-based), 'classifier' or 'default'."""
        route: RouteConfig | None = self.aliases[name].route
        assert route is not None
        for i, rule in enumerate(route.rules, 1):
            if rule_matches(rule, req):
                return rule.to, f"rule-{i}"
        if route.classifier is not None and req.last_user.strip():
            target, score = self.classifier(name, route.classifier).predict(req.last_user)
            if score >= route.classifier.min_similarity:
                return target, "classifier"
        return route.default, "default"

    def follow(self, name: str, req: RouteInput) -> list[tuple[str, str, str]]:
        """Hops (alias, target, reason) from a routing alias to the name that answers (the last target)."""
        hops = []
        while self.routes(name):
            target, reason = self.decide(name, req)
            hops.append((name, target, reason))
            name = target
        return hops
