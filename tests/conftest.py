"""Shared pytest fixtures.

``tiny_corpus_dir`` synthesises, once per test session, a very small corpus in Multilingual
LibriSpeech's on-disk format (all 8 languages; ``TINY_CORPUS_COUNTS`` utterances per language and
split, 2-6 words each, spoken by espeak-ng) for tests of the MLS reader, manifests and training.
It takes a few seconds on two cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from just_asr.data.languages import ISO_CODES

@pytest.fixture(autouse=True)
def _pytest_process_malloc_untouched(monkeypatch):
    """The commands run in-process by tests (``just-asr decode``/``transcribe``/``fit`` through their
    ``main``) would tune the pytest process's malloc for the rest of the session, so that later tests'
    results could depend on their order: here ``just_asr.runtime`` sees a ``mallopt`` that accepts
    and records nothing. Subprocesses are unaffected; tests of the tuning itself patch it again."""
    from just_asr import runtime

    monkeypatch.setattr(runtime, "_glibc", lambda: (lambda param, value: 1))


#: utterances per language in each split of the tiny corpus (train needs >= 7: six 1hr folds + 9hr)
TINY_CORPUS_COUNTS: dict[str, int] = {"train": 8, "dev": 2, "test": 2}
#: seed of the tiny corpus
TINY_CORPUS_SEED = 1234


def build_tiny_corpus(out_dir: Path, langs: list[str] | None = None, seed: int = TINY_CORPUS_SEED, jobs: int = 2):
    """Synthesise the tiny corpus into ``out_dir``; returns the :class:`CorpusSummary`."""
    from just_asr.data.synth import synthesize_corpus

    return synthesize_corpus(
        out_dir,
        hours=0.0,  # amounts are set by the floors below, so counts are exact
        dev_minutes=0.0,
        test_minutes=0.0,
        min_train_utts=TINY_CORPUS_COUNTS["train"],
        min_eval_utts=TINY_CORPUS_COUNTS["dev"],
        langs=langs,
        seed=seed,
        words=(2, 6),
        speakers=(4, 2, 2),
        jobs=jobs,
        progress=False,
    )


@pytest.fixture(scope="session")
def tiny_corpus_summary(tmp_path_factory: pytest.TempPathFactory):
    """The :class:`just_asr.data.synth.CorpusSummary` of the session's tiny corpus."""
    return build_tiny_corpus(tmp_path_factory.mktemp("tiny_mls"))


@pytest.fixture(scope="session")
def tiny_corpus_dir(tiny_corpus_summary) -> Path:
    """Root of a tiny MLS-format corpus: ``mls_<language>/`` for all 8 languages (read-only: do not modify)."""
    return Path(tiny_corpus_summary.out_dir)


@pytest.fixture(scope="session")
def tiny_corpus_langs() -> list[str]:
    """ISO codes of the languages in ``tiny_corpus_dir``, in MLS order."""
    return list(ISO_CODES)


@pytest.fixture(scope="session")
def tiny_corpus_counts() -> dict[str, int]:
    """Utterances per language in each split of ``tiny_corpus_dir``."""
    return dict(TINY_CORPUS_COUNTS)
