"""The shipped paraphrase / near-miss evaluation: precision and recall of a cache's
embedder, threshold and guard on labelled prompt pairs.

Run ``python -m perfkit.semantic`` to print the report for the defaults, or
call :func:`evaluate` with your own pairs to re-fit the threshold on your data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from perfkit.semantic.embedders import Embedder, HashingEmbedder
from perfkit.semantic.text import guard_conflict, normalize


@dataclass(frozen=True, slots=True)
class Pair:
    label: bool  # True: the same question; False: a near miss that must not hit
    kind: str
    a: str
    b: str


@dataclass(slots=True)
class Report:
    threshold: float
    precision: float
    recall: float
    true_positives: int
    false_positives: int
    false_negatives: int
    positives: int
    negatives: int
    errors: list[tuple[str, Pair, float]] = field(default_factory=list)
    threshold_for_precision: float | None = None  # lowest threshold reaching the target

    def format(self) -> str:
        lines = [
            f"pairs: {self.positives} same-question, {self.negatives} near-miss",
            f"threshold {self.threshold:.3f}: precision {self.precision:.3f}, "
            f"recall {self.recall:.3f} (tp={self.true_positives}, fp={self.false_positives}, "
            f"fn={self.false_negatives})",
        ]
        if self.threshold_for_precision is not None:
            lines.append(f"lowest threshold with precision >= 0.95: "
                         f"{self.threshold_for_precision:.3f}")
        for what, pair, sim in self.errors:
            lines.append(f"  {what} [{pair.kind}] sim={sim:.3f}: {pair.a!r} / {pair.b!r}")
        return "\n".join(lines)


PAIR_SETS = {"shipped": "eval_pairs.tsv", "review": "eval_review.tsv",
             "heldout": "eval_heldout.tsv"}
"""``shipped``: written with the guard (development data); ``review``: written in review,
then used to fix the guard (development data); ``heldout``: written after the last guard
change and never tuned on (the honest figure)."""


def load_pairs(name: str = "shipped") -> list[Pair]:
    """One of the labelled pair sets shipped with perfkit (see :data:`PAIR_SETS`)."""
    if name not in PAIR_SETS:
        raise ValueError(f"name must be one of {sorted(PAIR_SETS)}, got {name!r}")
    text = resources.files("perfkit.semantic").joinpath(PAIR_SETS[name]).read_text("utf-8")
    pairs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, kind, a, b = line.split("\t")
        pairs.append(Pair(label=label == "1", kind=kind, a=a, b=b))
    return pairs


def _decide(
    same_text: Sequence[bool], sims: np.ndarray, guard_ok: Sequence[bool], threshold: float
) -> list[bool]:
    # An exact (normalised) match is served by the first stage, before any similarity.
    return [same or (bool(sim >= threshold) and ok)
            for same, sim, ok in zip(same_text, sims, guard_ok)]


def evaluate(
    pairs: Iterable[Pair] | None = None,
    *,
    embedder: Embedder | None = None,
    threshold: float | None = None,
    guard: Callable[[str, str], str | None] | None = guard_conflict,
    target_precision: float = 0.95,
) -> Report:
    """Precision/recall of ``embedder`` + ``threshold`` + ``guard`` on ``pairs``."""
    from perfkit.semantic.cache import DEFAULT_THRESHOLD

    pairs = list(load_pairs() if pairs is None else pairs)
    embedder = embedder or HashingEmbedder()
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    va = np.asarray(embedder([p.a for p in pairs]), dtype=np.float32)
    vb = np.asarray(embedder([p.b for p in pairs]), dtype=np.float32)
    sims = np.einsum("ij,ij->i", va, vb)
    same_text = [normalize(p.a) == normalize(p.b) for p in pairs]
    guard_ok = [guard is None or guard(p.a, p.b) is None for p in pairs]

    def score(t: float) -> tuple[int, int, int, list[bool]]:
        hits = _decide(same_text, sims, guard_ok, t)
        tp = sum(h and p.label for h, p in zip(hits, pairs))
        fp = sum(h and not p.label for h, p in zip(hits, pairs))
        fn = sum(not h and p.label for h, p in zip(hits, pairs))
        return tp, fp, fn, hits

    tp, fp, fn, hits = score(threshold)
    report = Report(
        threshold=threshold,
        precision=tp / (tp + fp) if tp + fp else 1.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        true_positives=tp, false_positives=fp, false_negatives=fn,
        positives=sum(p.label for p in pairs), negatives=sum(not p.label for p in pairs),
    )
    for pair, hit, sim in zip(pairs, hits, sims):
        if hit and not pair.label:
            report.errors.append(("WRONG HIT", pair, float(sim)))
    for t in np.arange(0.30, 1.0001, 0.005):
        ttp, tfp, _, _ = score(float(t))
        if ttp + tfp and ttp / (ttp + tfp) >= target_precision:
            report.threshold_for_precision = float(t)
            break
    return report


def main(argv: Sequence[str] = ()) -> int:
    for name in PAIR_SETS:
        pairs = load_pairs(name)
        report = evaluate(pairs)
        bare = evaluate(pairs, guard=None)
        print(f"== {name} ({'held out' if name == 'heldout' else 'development data'})")
        print(report.format())
        print(f"without the lexical guard: precision {bare.precision:.3f}, "
              f"recall {bare.recall:.3f} (fp={bare.false_positives})")
    if "--misses" in argv:
        emb = HashingEmbedder()
        for name in PAIR_SETS:
            pairs = load_pairs(name)
            va, vb = emb([p.a for p in pairs]), emb([p.b for p in pairs])
            for p, s in zip(pairs, np.einsum("ij,ij->i", va, vb)):
                if p.label:
                    print(f"  {name} pos sim={s:.3f} guard={guard_conflict(p.a, p.b)}: "
                          f"{p.a!r} / {p.b!r}")
    return 0
