"""Language temperature sampling (empirical proportions vs p(l) ∝ n_l^(1/τ)) and the data loaders."""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter

import pytest

from data_helpers import write_mls_corpus
from just_asr.data.mls import load_manifests, prepare_mls
from just_asr.data.sampling import language_mix, language_stats, temperature_mux
from just_asr.data.tokenizer import language_shares

#: language -> (number of cuts, duration of each cut in seconds)
LAYOUT = {"en": (40, 2.0), "de": (15, 4.0), "pl": (5, 1.0)}
DRAWS = 12000
#: small sampler buffers: the tiny corpora repeat endlessly, big buffers only cost time
FAST = dict(num_cuts_for_bins_estimate=200, buffer_size=500, shuffle_buffer_size=500)


def _fake_cuts(lang: str, n: int, dur: float):
    """Cuts with a recording that is never read (sampling needs only ids and durations)."""
    from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment

    cuts = []
    for i in range(n):
        rid = f"{lang}-{i}"
        rec = Recording(rid, [AudioSource("file", [0], "/nonexistent.flac")], 16000, int(dur * 16000), dur)
        sup = SupervisionSegment(rid, rid, 0.0, dur, text="a", language=lang)
        cuts.append(MonoCut(rid, 0.0, dur, 0, recording=rec, supervisions=[sup]))
    return CutSet.from_cuts(cuts)


def _draw(temperature: float, unit: str, seed: int = 0):
    cuts = {l: _fake_cuts(l, n, d) for l, (n, d) in LAYOUT.items()}
    mux, mix = temperature_mux(cuts, temperature, unit, seed=seed)
    drawn = list(itertools.islice(mux, DRAWS))
    counts = Counter(c.supervisions[0].language for c in drawn)
    secs = Counter()
    for c in drawn:
        secs[c.supervisions[0].language] += c.duration
    total = sum(secs.values())
    return {l: counts[l] / DRAWS for l in LAYOUT}, {l: secs[l] / total for l in LAYOUT}, mix, drawn


def test_language_shares_hand_values():
    s = language_shares({"a": 100.0, "b": 1.0}, 1.0)
    assert s["a"] == pytest.approx(100 / 101) and s["b"] == pytest.approx(1 / 101)
    s = language_shares({"a": 100.0, "b": 1.0}, 2.0)
    assert s["a"] == pytest.approx(10 / 11)
    assert language_shares({"a": 100.0, "b": 1.0}, math.inf) == {"a": 0.5, "b": 0.5}
    # huge amounts do not overflow
    s = language_shares({"a": 1e300, "b": 1e-300}, 0.01)
    assert s["a"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        language_shares({"a": 1.0}, 0.0)
    with pytest.raises(ValueError, match="'b'"):
        language_shares({"a": 1.0, "b": 0.0}, 1.0)


def test_mix_weights_by_hand():
    stats = language_stats({l: _fake_cuts(l, n, d) for l, (n, d) in LAYOUT.items()})
    assert stats["de"].utterances == 15 and stats["de"].hours == pytest.approx(60 / 3600)
    mix = language_mix(stats, 1.0, "hours")
    # hours: en 80 s, de 60 s, pl 5 s; at τ=1 every cut is equally likely
    assert mix.target["en"] == pytest.approx(80 / 145)
    assert mix.mux_weights == pytest.approx({"en": 40 / 60, "de": 15 / 60, "pl": 5 / 60})
    mix = language_mix(stats, 2.0, "utterances")
    z = math.sqrt(40) + math.sqrt(15) + math.sqrt(5)
    assert mix.mux_weights["pl"] == pytest.approx(math.sqrt(5) / z)


def test_tau_one_is_natural():
    cut_share, hour_share, mix, _ = _draw(1.0, "hours")
    tol = 4 * math.sqrt(0.25 / DRAWS)
    for l, (n, d) in LAYOUT.items():
        assert cut_share[l] == pytest.approx(n / 60, abs=tol)
        assert hour_share[l] == pytest.approx(n * d / 145, abs=tol)
        assert mix.natural[l] == pytest.approx(mix.target[l])
    cut_share_u, _, _, _ = _draw(1.0, "utterances", seed=1)
    for l, (n, _) in LAYOUT.items():
        assert cut_share_u[l] == pytest.approx(n / 60, abs=tol)


def test_large_tau_is_uniform_in_the_unit():
    tol = 4 * math.sqrt(0.25 / DRAWS)
    _, hour_share, mix, _ = _draw(1e6, "hours")
    for l in LAYOUT:
        assert hour_share[l] == pytest.approx(1 / 3, abs=tol + 0.01)
        assert mix.target[l] == pytest.approx(1 / 3, abs=1e-4)
    cut_share, _, _, _ = _draw(1e6, "utterances")
    for l in LAYOUT:
        assert cut_share[l] == pytest.approx(1 / 3, abs=tol)


def test_intermediate_tau_matches_formula():
    tau = 2.0
    cut_share, hour_share, _, drawn = _draw(tau, "hours", seed=5)
    amounts = {l: n * d for l, (n, d) in LAYOUT.items()}
    z = sum(a ** (1 / tau) for a in amounts.values())
    tol = 4 * math.sqrt(0.25 / DRAWS) + 0.01
    for l, a in amounts.items():
        assert hour_share[l] == pytest.approx(a ** (1 / tau) / z, abs=tol)
    # ids are preserved across repetitions of the endless stream
    assert {c.id for c in drawn} == {f"{l}-{i}" for l, (n, _) in LAYOUT.items() for i in range(n)}


def test_proportions_are_logged(caplog):
    with caplog.at_level(logging.INFO, logger="just_asr.data.sampling"):
        _, mix = temperature_mux({l: _fake_cuts(l, n, d) for l, (n, d) in LAYOUT.items()}, 3.0, "hours")
    text = caplog.text
    assert "temperature 3" in text and "proportions by hours" in text
    for l in LAYOUT:
        assert f"{100 * mix.target[l]:7.2f}%" in text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    write_mls_corpus(root / "corpus", langs=("pl", "de"), splits={"train": 8, "dev": 2, "test": 7}, limited=False)
    prepare_mls(root / "corpus", root / "out", progress=False)
    return root / "out"


def test_train_loader_batches_respect_max_duration(corpus):
    from just_asr.data.loader import make_train_dataloader

    cuts = {l: load_manifests(corpus, l, "train") for l in ("pl", "de")}
    dl = make_train_dataloader(cuts, None, max_duration=2.0, temperature=1.0, num_buckets=2, seed=3, num_cuts_for_bins_estimate=200, buffer_size=500, shuffle_buffer_size=500)
    assert dl.language_mix.mux_weights == pytest.approx({"pl": 0.5, "de": 0.5})
    seen = Counter()
    for batch in itertools.islice(dl, 8):
        # lhotse's rule: a cut is added while (k + 1) * longest-so-far <= max_duration, so the
        # first n - 1 cuts (the batch keeps the sampler's order) satisfy n * longest <= max
        n = len(batch["cut_ids"])
        longest_before_last = float(batch["feature_lens"][:-1].max()) * 0.01 if n > 1 else 0.0
        assert n * longest_before_last <= 2.0 + 0.01 * n
        assert batch["features"].shape[0] == len(batch["cut_ids"]) == len(batch["langs"])
        seen.update(batch["langs"])
    assert set(seen) == {"pl", "de"}


def test_distributed_ranks_partition_eval_data(corpus):
    from just_asr.data.loader import make_eval_dataloader, make_train_dataloader

    cuts = load_manifests(corpus, "pl", "test", lazy=False)
    ids = [[cid for b in make_eval_dataloader(cuts, None, max_duration=1.5, world_size=2, rank=r) for cid in b["cut_ids"]] for r in (0, 1)]
    real = [{i for i in ids_r if "_dup" not in i} for ids_r in ids]
    assert real[0].isdisjoint(real[1])
    assert real[0] | real[1] == {c.id for c in cuts}
    single = [cid for b in make_eval_dataloader(cuts, None, max_duration=1.5) for cid in b["cut_ids"]]
    assert sorted(single) == sorted(c.id for c in cuts)
    # training ranks draw different batches from the same seeded stream
    tr = {l: load_manifests(corpus, l, "train") for l in ("pl", "de")}
    b0 = [b["cut_ids"] for b in itertools.islice(make_train_dataloader(tr, None, max_duration=2.0, world_size=2, rank=0, num_buckets=2, **FAST), 4)]
    b1 = [b["cut_ids"] for b in itertools.islice(make_train_dataloader(tr, None, max_duration=2.0, world_size=2, rank=1, num_buckets=2, **FAST), 4)]
    assert b0 != b1
    with pytest.raises(ValueError, match="rank"):
        make_train_dataloader(tr, None, max_duration=2.0, world_size=2, rank=2)


def test_read_cut_manifests_combines_in_order_and_names_bad_files(tmp_path, caplog):
    from just_asr.data.loader import read_cut_manifests

    a, b = tmp_path / "a_cuts.jsonl.gz", tmp_path / "b_cuts.jsonl.gz"
    _fake_cuts("pl", 2, 1.0).to_file(a)
    _fake_cuts("de", 3, 1.5).to_file(b)
    assert [c.id for c in read_cut_manifests([b, str(a)])] == ["de-0", "de-1", "de-2", "pl-0", "pl-1"]
    with pytest.raises(ValueError, match=r"a_cuts\.jsonl\.gz: cut id 'pl-0' also appears in .*a_cuts\.jsonl\.gz"):
        read_cut_manifests([a, a])
    with pytest.raises(ValueError, match=r"nope\.jsonl\.gz: cut manifest not found"):
        read_cut_manifests([a, tmp_path / "nope.jsonl.gz"])
    bad = tmp_path / "bad_cuts.jsonl"
    bad.write_text('{"not": "a cut"}\n')
    with pytest.raises(ValueError, match=r"bad_cuts\.jsonl: not a lhotse cut manifest"):
        read_cut_manifests([bad])
    with pytest.raises(ValueError, match="no cut manifests given"):
        read_cut_manifests([])
    empty = tmp_path / "empty_cuts.jsonl"
    empty.write_text("")
    with caplog.at_level(logging.WARNING):
        assert [c.id for c in read_cut_manifests([empty, a])] == ["pl-0", "pl-1"]  # lhotse reads it as None
    assert "empty_cuts.jsonl: the cut manifest holds no cuts" in caplog.text
    assert len(read_cut_manifests([empty])) == 0
    lines = (tmp_path / "lines_cuts.jsonl")
    _fake_cuts("it", 2, 1.0).to_file(lines)
    lines.write_text(lines.read_text() + '{"id": "broken", \n')
    with pytest.raises(ValueError, match=r"lines_cuts\.jsonl: not a lhotse cut manifest"):
        read_cut_manifests([lines])


@pytest.mark.parametrize("bad, match", [
    (dict(rank=2, world_size=2), r"rank must be in \[0, world_size=2\), got 2"),
    (dict(max_duration=0.0), "max_duration must be > 0, got 0.0"),
    (dict(feature_source="wav"), "wav"),
])
def test_loader_builders_check_their_arguments_first(tmp_path, bad, match):
    """The train, eval and Shar builders refuse a bad rank, a non-positive batch duration or an
    unknown feature source before reading anything (the same checks in all three)."""
    from just_asr.data.loader import make_eval_dataloader, make_train_dataloader
    from just_asr.data.shar import make_shar_train_dataloader

    args = dict(max_duration=2.0) | bad
    with pytest.raises(ValueError, match=match):
        make_train_dataloader({"pl": _fake_cuts("pl", 2, 1.0)}, None, **args)
    with pytest.raises(ValueError, match=match):
        make_eval_dataloader(_fake_cuts("pl", 2, 1.0), None, **args)
    with pytest.raises(ValueError, match=match):  # checked before the (missing) index is opened
        make_shar_train_dataloader(tmp_path / "no-shar", ["pl"], "train", None, **args)
