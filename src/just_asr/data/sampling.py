"""Language sampling with a temperature, for imbalanced multilingual training data.

MLS has about 44.7k h of English and about 100 h of Polish. Drawing utterances naturally, a model
almost never sees Polish; drawing languages uniformly, it sees each Polish utterance hundreds of
times per English one. Temperature sampling sits in between: language ``l`` with amount ``n_l``
gets the share

    p(l) = n_l^(1/τ) / Σ_k n_k^(1/τ)

τ = 1 is the natural distribution, τ → ∞ the uniform one (XLS-R and mSLAM use τ ≈ 2-5).

``unit`` says what ``n_l`` and ``p(l)`` count:

* ``"hours"`` (default): ``n_l`` is hours of audio, and ``p(l)`` is the share of *audio time*
  the model hears from ``l``. lhotse's ``CutSet.mux`` picks the language of each next *cut*, so
  the per-cut mux weight is ``p(l) / mean_duration(l)`` (languages with shorter utterances are
  picked more often to give the same time).
* ``"utterances"``: ``n_l`` is the number of cuts and ``p(l)`` the share of cuts; mux weight =
  ``p(l)``.

Either way τ = 1 gives every cut the same chance (natural sampling).

:func:`temperature_mux` builds the infinite multiplexed stream (each language's cuts repeated
endlessly, ``CutSet.mux`` with the weights) and logs the effective proportions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping

from just_asr.data.tokenizer import language_shares

logger = logging.getLogger(__name__)

UNITS = ("hours", "utterances")


@dataclass(frozen=True)
class LanguageStats:
    """Amount of data of one language: cut count and total hours."""

    utterances: int
    hours: float

    @property
    def mean_duration(self) -> float:
        """Mean cut duration in seconds."""
        return 3600.0 * self.hours / self.utterances


def language_stats(cuts_by_lang: Mapping[str, object]) -> dict[str, LanguageStats]:
    """Count cuts and hours per language (one pass over each CutSet; lazy sets are streamed)."""
    out = {}
    for lang, cuts in cuts_by_lang.items():
        n = 0
        secs = 0.0
        for c in cuts:
            n += 1
            secs += float(c.duration)
        if n == 0:
            raise ValueError(f"language {lang!r} has no cuts")
        out[lang] = LanguageStats(n, secs / 3600.0)
    return out


@dataclass
class LanguageMix:
    """The language distribution of a training stream.

    ``natural``/``target``: shares in ``unit`` (τ = 1 vs τ); ``mux_weights``: the per-cut
    probability of drawing from each language; ``cut_shares``: the resulting share of cuts.
    """

    temperature: float
    unit: str
    stats: dict[str, LanguageStats]
    natural: dict[str, float] = field(default_factory=dict)
    target: dict[str, float] = field(default_factory=dict)
    mux_weights: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """A printable table of the proportions."""
        lines = [f"language sampling: temperature {self.temperature:g}, proportions by {self.unit}"]
        lines.append(f"  {'lang':<5} {'hours':>10} {'cuts':>10} {'natural':>8} {'sampled':>8} {'cut prob':>8}")
        for lang in self.stats:
            s = self.stats[lang]
            lines.append(
                f"  {lang:<5} {s.hours:10.2f} {s.utterances:10d} {100 * self.natural[lang]:7.2f}%"
                f" {100 * self.target[lang]:7.2f}% {100 * self.mux_weights[lang]:7.2f}%"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "unit": self.unit,
            "natural": self.natural,
            "target": self.target,
            "mux_weights": self.mux_weights,
        }


def language_mix(stats: Mapping[str, LanguageStats], temperature: float = 1.0, unit: str = "hours") -> LanguageMix:
    """The shares ``p(l) ∝ n_l^(1/τ)`` and the per-cut mux weights that realise them."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    amounts = {l: (s.hours if unit == "hours" else float(s.utterances)) for l, s in stats.items()}
    natural = language_shares(amounts, 1.0)
    target = language_shares(amounts, temperature)
    if unit == "hours":
        raw = {l: target[l] / stats[l].mean_duration for l in stats}
    else:
        raw = dict(target)
    total = sum(raw.values())
    weights = {l: v / total for l, v in raw.items()}
    return LanguageMix(temperature, unit, dict(stats), natural, target, weights)


def temperature_mux(
    cuts_by_lang: Mapping[str, object],
    temperature: float = 1.0,
    unit: str = "hours",
    *,
    seed: int = 0,
    stats: Mapping[str, LanguageStats] | None = None,
    infinite: bool = True,
):
    """Multiplex per-language CutSets with temperature weights.

    Returns ``(cuts, mix)``: a lazy CutSet that draws each next cut from language ``l`` with
    probability ``mix.mux_weights[l]`` (each language repeated endlessly when ``infinite``, so
    the proportions hold for the whole run; iterate it with a step budget), and the
    :class:`LanguageMix`, whose table is logged. ``stats`` skips the counting pass when known.
    Cut ids are kept as they are (repetitions do not rename cuts).
    """
    from lhotse import CutSet

    if not cuts_by_lang:
        raise ValueError("no languages to sample from")
    if not (temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    stats = dict(stats) if stats is not None else language_stats(cuts_by_lang)
    mix = language_mix({l: stats[l] for l in cuts_by_lang}, temperature, unit)
    langs = list(cuts_by_lang)
    sets = [cuts_by_lang[l] for l in langs]
    if infinite:
        sets = [cs.repeat(preserve_id=True) for cs in sets]
    if len(sets) == 1:
        mux = sets[0]
    else:
        mux = CutSet.mux(*sets, weights=[mix.mux_weights[l] for l in langs], seed=seed)
    logger.info("%s", mix.describe())
    return mux, mix


def expected_share_error(p: float, n: int) -> float:
    """Standard deviation of an empirical share over ``n`` independent draws (for tolerances)."""
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))
