"""Writers of small MLS-format corpora (sine/noise audio via soundfile) for the data tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from just_asr.data.languages import get_language

#: one sentence per language, with the language's diacritics
SENTENCES: dict[str, list[str]] = {
    "en": ["the quick brown fox jumps over the lazy dog", "i've seen phyllis's wheel-chair"],
    "de": ["größere übungen für die straße", "schön wäre es öfter zu üben"],
    "nl": ["één café naïef geëerd", "de reünie was coördinatie"],
    "fr": ["l'élève français où noël déçu", "cœur sœur être naïve façade"],
    "es": ["el niño pidió más jamón señor", "pingüino corazón árbol útil"],
    "it": ["perché città è già più", "virtù caffè così però"],
    "pt": ["não há ação sem coração", "você está à espera avó"],
    "pl": ["zażółć gęślą jaźń", "więc czego chcecie odemnie spytałem"],
}


@dataclass
class CorpusSpec:
    """What :func:`write_mls_corpus` wrote: ids per (iso, split), and per limited subset."""

    root: Path
    ids: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    handles_9hr: dict[str, list[str]] = field(default_factory=dict)
    handles_1hr: dict[str, list[str]] = field(default_factory=dict)
    genders: dict[str, str] = field(default_factory=dict)


def tone(duration: float, sr: int = 16000, freq: float = 440.0, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A sine tone plus a little noise: ``(N,)`` or ``(N, C)`` float32."""
    n = int(round(duration * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    x = (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(n)).astype(np.float32)
    if channels > 1:
        x = np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1)
    return x


def write_audio(path: Path, samples: np.ndarray, sr: int, fmt: str = "flac") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "opus":
        sf.write(str(path), samples, sr, format="OGG", subtype="OPUS")
    elif fmt == "flac":
        sf.write(str(path), samples, sr, format="FLAC", subtype="PCM_16")
    else:
        sf.write(str(path), samples, sr)
    return path


def write_mls_corpus(
    root: Path,
    langs: tuple[str, ...] = ("pl", "de"),
    splits: dict[str, int] | None = None,
    *,
    fmt: str = "flac",
    sr: int | None = None,
    speakers: int = 2,
    limited: bool = True,
    durations: tuple[float, ...] = (0.4, 0.55, 0.7),
) -> CorpusSpec:
    """Write ``root/mls_<lang>[_opus]/...`` in MLS's layout with short tone audio.

    ``splits``: utterances per split (default train 8, dev 3, test 3). Utterance i of speaker s
    is ``<s>_<book>_<i:06d>``. With ``limited``, the first 3 train utterances are the 9hr handles
    and the next 6 are split over folds 0..5 of the 1hr handles (one each, up to the train size).
    """
    splits = splits or {"train": 8, "dev": 3, "test": 3}
    sr = sr or (48000 if fmt == "opus" else 16000)
    ext = ".opus" if fmt == "opus" else ".flac"
    spec = CorpusSpec(root=root)
    for li, iso in enumerate(langs):
        lang = get_language(iso)
        ldir = root / (lang.folder + ("_opus" if fmt == "opus" else ""))
        ldir.mkdir(parents=True, exist_ok=True)
        meta = [" SPEAKER   |   GENDER   | PARTITION  |  MINUTES   |  BOOK ID   |    TITLE    |   CHAPTER   "]
        spk_base = 1000 * (li + 1)
        for si, split in enumerate(splits):
            for s in range(speakers):
                spk = str(spk_base + 10 * si + s)
                g = "F" if s % 2 else "M"
                spec.genders[spk] = g
                meta.append(f"{spk:<10}|   {g}   | {split:<10} |  1.0   |  {500 + s}  |  A Book   |  Chapter  ")
        (ldir / "metainfo.txt").write_text("\n".join(meta) + "\n", encoding="utf-8")
        for si, (split, n) in enumerate(splits.items()):
            sdir = ldir / split
            lines, segs, ids = [], [], []
            for i in range(n):
                s = i % speakers
                spk = str(spk_base + 10 * si + s)
                book = str(500 + s)
                uid = f"{spk}_{book}_{i:06d}"
                text = SENTENCES[iso][i % len(SENTENCES[iso])]
                dur = durations[i % len(durations)]
                p = write_audio(sdir / "audio" / spk / book / f"{uid}{ext}", tone(dur, sr, 200 + 50 * i, seed=i), sr, fmt)
                lines.append(f"{uid}\t{text}")
                segs.append(f"{uid}\thttp://example.org/{book}.mp3\t{10.0 * i:.2f}\t{10.0 * i + 99:.2f}")
                ids.append(uid)
                spec.texts[uid] = text
                spec.paths[uid] = p
            (sdir / "transcripts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            (sdir / "segments.txt").write_text("\n".join(segs) + "\n", encoding="utf-8")
            spec.ids[(iso, split)] = ids
            if split == "train" and limited:
                base = sdir / "limited_supervision"
                nine = ids[:3]
                (base / "9hr").mkdir(parents=True, exist_ok=True)
                (base / "9hr" / "handles.txt").write_text("\n".join(nine) + "\n")
                spec.handles_9hr[iso] = nine
                one = []
                for fold in range(6):
                    fd = base / "1hr" / str(fold)
                    fd.mkdir(parents=True, exist_ok=True)
                    chunk = ids[3 + fold : 4 + fold]
                    (fd / "handles.txt").write_text("".join(c + "\n" for c in chunk))
                    one.extend(chunk)
                spec.handles_1hr[iso] = one
    return spec


#: a ~50k-parameter model for `just-asr fit` runs in tests, as nested overrides of the tiny preset
SMALL_MODEL_ARGS = [
    "--model.arch.frontend.conv_channels", "8",
    "--model.arch.encoder.d_model", "32", "--model.arch.encoder.num_heads", "2",
    "--model.arch.encoder.ffn_dim", "64", "--model.arch.encoder.conv_kernel", "3",
    "--model.arch.quantizer.codebook_size", "16", "--model.arch.quantizer.code_dim", "32",
    "--model.arch.contrastive.num_layers", "1", "--model.arch.contrastive.final_dim", "16",
    "--model.arch.contrastive.num_distractors", "4", "--model.arch.mlm.num_layers", "1",
    "--model.arch.decoder.embed_dim", "16", "--model.arch.decoder.hidden_dim", "32",
    "--model.arch.decoder.joint_dim", "32",
]
