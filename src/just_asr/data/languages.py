"""The eight Multilingual LibriSpeech languages and the names they go by.

MLS names its folders ``mls_<english|german|...>``; users and manifests use ISO 639-1 codes. Every
function that takes a language accepts either form.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    iso: str  #: ISO 639-1 code, e.g. ``"pl"``
    mls: str  #: MLS folder suffix, e.g. ``"polish"`` (folder ``mls_polish``)
    espeak: str  #: espeak-ng voice name
    train_hours: float  #: hours of MLS train audio (arXiv release), for the imbalance profile
    #: letters of the language's MLS normal form besides a-z (lower case, diacritics kept)
    extra_letters: str = ""

    @property
    def folder(self) -> str:
        return f"mls_{self.mls}"


LANGUAGES: tuple[Language, ...] = (
    Language("en", "english", "en-us", 44659.7, ""),
    Language("de", "german", "de", 1966.5, "äöüß"),
    Language("nl", "dutch", "nl", 1554.2, "àáâäèéêëíïóôöúûü"),
    Language("fr", "french", "fr", 1076.6, "àâæçèéêëîïôœùûüÿ"),
    Language("es", "spanish", "es", 917.7, "áéíñóúü"),
    Language("it", "italian", "it", 247.4, "àèéìíîòóùú"),
    Language("pt", "portuguese", "pt", 160.96, "áâãàçéêíóôõú"),
    Language("pl", "polish", "pl", 103.65, "ąćęłńóśźż"),
)

_BY_NAME: dict[str, Language] = {}
for _l in LANGUAGES:
    _BY_NAME[_l.iso] = _l
    _BY_NAME[_l.mls] = _l
    _BY_NAME[_l.folder] = _l

ISO_CODES: tuple[str, ...] = tuple(l.iso for l in LANGUAGES)


def get_language(name: str) -> Language:
    """Look a language up by ISO code (``"pl"``), MLS name (``"polish"``) or folder (``"mls_polish"``).

    Raises ``ValueError`` naming the accepted forms for an unknown name.
    """
    key = name.strip().lower()
    if key not in _BY_NAME:
        accepted = ", ".join(f"{l.iso}/{l.mls}" for l in LANGUAGES)
        raise ValueError(f"unknown MLS language {name!r}; use one of: {accepted}")
    return _BY_NAME[key]


def resolve_languages(names: str | list[str] | tuple[str, ...] | None) -> list[Language]:
    """Turn ``"en,pl"``, ``["english", "pl"]`` or ``None`` (all eight) into Language objects, in MLS order."""
    if names is None:
        return list(LANGUAGES)
    if isinstance(names, str):
        names = [n for n in names.replace(" ", ",").split(",") if n]
    wanted = {get_language(n).iso for n in names}
    return [l for l in LANGUAGES if l.iso in wanted]
