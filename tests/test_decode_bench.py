"""Tests for the trained-model mode of ``benchmarks/decode.py`` (``--model DIR --cuts MANIFEST...``):
a randomly initialised tiny model saved as a model directory, decoded on the test cuts of two
languages of the tiny espeak-ng corpus."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from just_asr.model import JustModel, ModelConfig

ROOT = Path(__file__).resolve().parents[1]

from model_helpers import record_search_threads
from test_inference import TINY  # the same tiny model as the model-directory tests


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bench():
    """``benchmarks/decode.py`` imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("decode_bench", ROOT / "benchmarks" / "decode.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def setup(tiny_corpus_dir, tmp_path_factory):
    """Test manifests of en and pl and a model directory with a random tiny model."""
    from just_asr.data.dataset import cut_text
    from just_asr.data.mls import load_manifests, prepare_mls
    from just_asr.data.tokenizer import Tokenizer, train_tokenizer
    from just_asr.inference import save_model_dir

    work = tmp_path_factory.mktemp("decode_bench")
    prepare_mls(tiny_corpus_dir, work / "manifests", langs=["en", "pl"], splits=["test"], progress=False)
    manifests = sorted(str(p) for p in (work / "manifests").glob("mls-*_cuts_test.jsonl.gz"))
    assert len(manifests) == 2
    texts = {l: [cut_text(c) for c in load_manifests(work / "manifests", l, "test")] * 5 for l in ("en", "pl")}
    tok = train_tokenizer(texts, work / "tok", vocab_size=40, required_langs=["en", "pl"])
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(TINY)
    model = JustModel(cfg, Tokenizer(tok).vocab_size).eval()
    with torch.no_grad():  # emissions likelier than blank, so hypotheses are not all empty
        model.joiner.output.bias[0] -= 1.0
    save_model_dir(work / "model", model, cfg.to_dict(), tok)
    return work / "model", manifests


def test_trained_mode_table(bench, setup, capsys):
    model_dir, manifests = setup
    rc = bench.main(["--model", str(model_dir), "--cuts", *manifests, "--beams", "1,2", "--threads", "1",
                     "--repeats", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| ")}
    header = rows.pop("method")
    assert header[:9] == ["method", "audio s", "encoder RTF", "search RTF", "total RTF", "search x greedy",
                          "total x greedy", "units/s", "WER avg %"]
    assert header[9:] == ["WER en %", "WER pl %"]  # MLS order, only the languages present
    assert list(rows) == ["greedy", "beam 1", "beam 2"]
    for name, row in rows.items():
        values = [float(v) for v in row[1:]]
        assert all(v >= 0 and v != float("inf") for v in values), row
        audio, enc, search, total = values[:4]
        assert total == pytest.approx(enc + search, abs=2e-5)  # rounded to 5 decimals each
        wers = values[7:]
        assert wers[0] == pytest.approx((wers[1] + wers[2]) / 2, abs=0.01)  # unweighted mean
    assert rows["greedy"][5] == "1.00"
    assert rows["beam 1"][8:] == rows["greedy"][8:]  # same units -> same WER
    assert "beam-1 check: PASS" in out
    assert "4 utterances (4 scored) in " in out and "spread over repeats" in out


def test_trained_mode_values(bench, setup):
    """Audio seconds, WER and units against independent computations."""
    from lhotse import CutSet

    from just_asr.data.dataset import cut_language, cut_text
    from just_asr.evaluate import word_errors
    from just_asr.inference import Transcriber, load_model_dir

    model_dir, manifests = setup
    res = bench.run_trained(model_dir, manifests, beams=[2], repeats=1)
    cuts = [c for m in manifests for c in CutSet.from_file(m)]
    assert res.num_utts == len(cuts) == 4 and res.num_batches >= 1
    # 10 ms frames: (samples + 80) // 160 frames per cut
    assert res.audio_seconds == pytest.approx(sum((c.num_samples + 80) // 160 for c in cuts) / 100)
    assert [m.name for m in res.methods] == ["greedy", "beam 2"]
    assert res.beam1_mismatches == 0  # beam 1 was not asked for: run untimed for the check
    assert len(res.encoder_runs) == 1 and res.encoder_seconds > 0
    # greedy, one utterance at a time through the Transcriber (no padding at all) -> same units, same WER
    loaded = load_model_dir(model_dir)
    tr = Transcriber(loaded, method="greedy")
    greedy = res.methods[0]
    for lang in ("en", "pl"):
        refs, hyps = [], []
        for c in cuts:
            if cut_language(c) != lang:
                continue
            feats = loaded.extract_features(c.load_audio()[0], c.sampling_rate)
            r = tr.decode_batch(feats[None], torch.tensor([feats.shape[0]]))
            assert greedy.tokens[c.id] == list(r.tokens[0])
            refs.append(cut_text(c))
            hyps.append(loaded.tokenizer.decode(r.tokens[0]))
        assert greedy.wer_by_lang[lang] == pytest.approx(100 * word_errors(refs, hyps).rate)
    assert greedy.wer == pytest.approx((greedy.wer_by_lang["en"] + greedy.wer_by_lang["pl"]) / 2)


def test_bf16_encoder_mode(bench, setup, monkeypatch):
    """--encoder-dtype bfloat16: the encoder runs under bf16 autocast (seen by a hook), its output
    reaches the search as float32, and a wrong dtype name is refused."""
    from just_asr.model import JustModel

    model_dir, manifests = setup
    seen: list[tuple[torch.dtype | None, bool]] = []
    real_encode = JustModel.encode

    def spy(self, features, lens):
        enc, enc_lens = real_encode(self, features, lens)
        seen.append((enc.dtype, torch.is_autocast_enabled("cpu")))
        return enc, enc_lens

    monkeypatch.setattr(JustModel, "encode", spy)
    res = bench.run_trained(model_dir, manifests, beams=[1], repeats=1, encoder_dtype="bfloat16")
    assert seen and all(on for _, on in seen) and {d for d, _ in seen} == {torch.bfloat16}
    assert res.beam1_mismatches == 0 and res.methods[0].wer is not None
    with pytest.raises(ValueError, match="unknown encoder dtype 'float16'"):
        bench.run_trained(model_dir, manifests, beams=[1], repeats=1, encoder_dtype="float16")


def test_search_batch_pools_searches_without_changing_units(bench, setup):
    """--search-batch: one search per encoder batch (0), pools of >= 2 utterances, or all in one;
    the units of every method are the same in all three, and with two encoder threads."""
    model_dir, manifests = setup
    runs = {sb: bench.run_trained(model_dir, manifests, beams=[2], repeats=1, max_duration=1.0, search_batch=sb)
            for sb in (0, 2, 256)}
    threaded = bench.run_trained(model_dir, manifests, beams=[2], repeats=1, max_duration=1.0, encoder_workers=2)
    assert [m.tokens for m in threaded.methods] == [m.tokens for m in runs[256].methods]
    assert runs[0].num_batches == 4  # 1 s per batch: one cut each
    assert [runs[sb].num_searches for sb in (0, 2, 256)] == [4, 2, 1]
    for sb in (2, 256):
        for m0, m in zip(runs[0].methods, runs[sb].methods, strict=True):
            assert m.tokens == m0.tokens and m.wer == m0.wer
    with pytest.raises(ValueError, match="--search-batch must be >= 0"):
        bench.run_trained(model_dir, manifests, beams=[1], repeats=1, search_batch=-1)


def test_last_search_gets_search_threads(bench, setup, monkeypatch):
    """As just-asr decode with encoder workers: only the search that starts after the last batch is
    encoded (the last pool) runs on ``search_threads``; the earlier ones keep the workers' setting."""
    model_dir, manifests = setup
    seen = record_search_threads(monkeypatch)
    assert torch.get_num_threads() == 1  # the module's fixture
    res = bench.run_trained(model_dir, manifests, beams=[2], repeats=1, max_duration=1.0, search_batch=2,
                            encoder_workers=2, search_threads=2)
    assert torch.get_num_threads() == 1
    assert res.num_searches == 2 and res.beam1_mismatches == 0
    assert len(seen) >= 6 and seen == [1, 2] * (len(seen) // 2)  # warm-up and timed passes, each method


def test_max_utts_per_lang_and_errors(bench, setup, tmp_path, capsys):
    model_dir, manifests = setup
    res = bench.run_trained(model_dir, manifests, beams=[1], repeats=1, max_utts_per_lang=1)
    assert res.num_utts == 2 and res.languages == ["en", "pl"]
    missing = tmp_path / "nope_cuts_test.jsonl.gz"
    assert bench.main(["--model", str(model_dir), "--cuts", str(missing), "--threads", "1"]) == 2
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--cuts", manifests[0]])  # --cuts without --model
    with pytest.raises(SystemExit):
        bench.main(["--model", str(model_dir)])  # --model without --cuts


def test_decode_parts_modes_run_and_report(setup, capsys, monkeypatch):
    """``benchmarks/decode_parts.py``: each in-process comparison runs on a small model and says
    what it compared (the predictor-step swap must not change a single unit)."""
    spec = importlib.util.spec_from_file_location("decode_parts_bench", ROOT / "benchmarks" / "decode_parts.py")
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    from just_asr.model.transducer import Predictor

    model_dir, manifests = setup
    step_before = Predictor.step
    common = ["--model", str(model_dir), "--cuts", *manifests, "--threads", "1", "--passes", "1"]
    assert parts.main(["predictor-step", *common]) == 0
    out = capsys.readouterr().out
    assert out.count("same units on 4 of 4") == 2 and Predictor.step is step_before
    assert parts.main(["encoder", *common, "--compare-src", str(ROOT / "src")]) == 0
    out = capsys.readouterr().out
    assert "encoder fp32" in out and "encoder bf16" in out
    assert parts.main(["encoder-threads", *common]) == 0
    assert "1 Python threads x 1 torch thread" in capsys.readouterr().out
    seen = record_search_threads(monkeypatch)
    assert parts.main(["search-threads", *common[:-4], "--threads", "2", "--passes", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("same units on 4 of 4") == 2 and "1 thread" in out and "2 threads" in out
    assert seen == [1, 2] * 4  # greedy and beam: one untimed and one timed call of each variant
    torch.set_num_threads(1)
    with pytest.raises(SystemExit):
        parts.main(["encoder", *common])  # no --compare-src
