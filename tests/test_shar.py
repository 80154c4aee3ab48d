"""Sharded corpora (lhotse Shar): ``just-asr export-shar`` and training from the shards.

* export a small MLS-format corpus (2 languages, train + dev) through the CLI with audio and
  features: the index counts cuts, hours and shards; reading the shards back gives the same cut
  ids, transcripts, audio samples (bit-exact: FLAC is lossless for the 16-bit source) and
  features (the training fbank, within lilcom's quantisation);
* the rank/worker split of the shards: for several slot counts (fewer and more slots than
  shards) and two passes, the slots partition the cuts (every cut exactly once per pass), and
  the shard order changes between passes; through real DataLoader workers of 2 ranks too;
* ``JustDataModule(shar_dir=...)`` gives the same batch dict as the jsonl path (same keys,
  dtypes; a cut's features and tokens equal those the jsonl loader computes for it) and a tiny
  model trains 2 steps from the shards with a dev pass read from the shards;
* a malformed index is refused with its file and line named.
"""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from just_asr.cli.main import main as cli

LANGS = ("pl", "de")
#: train cuts per language (shard size 3 -> 4 shards: 3 + 3 + 3 + 1)
N_TRAIN = 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Manifests, a tokenizer and a Shar export (audio + features, 3 cuts per shard)."""
    from data_helpers import write_mls_corpus

    from just_asr.data.dataset import cut_text
    from just_asr.data.mls import load_manifests, prepare_mls
    from just_asr.data.tokenizer import train_tokenizer

    work = tmp_path_factory.mktemp("shar")
    write_mls_corpus(work / "corpus", langs=LANGS, splits={"train": N_TRAIN, "dev": 2})
    prepare_mls(work / "corpus", work / "manifests", langs=list(LANGS), progress=False)
    texts = {l: [cut_text(c) for c in load_manifests(work / "manifests", l, "train")] for l in LANGS}
    tok = train_tokenizer(texts, work / "tok", vocab_size=128)
    code = cli(["export-shar", str(work / "manifests"), str(work / "shar"), "--langs", ",".join(LANGS),
                "--splits", "train,dev", "--fields", "both", "--shard-size", "3"])
    assert code == 0
    return SimpleNamespace(work=work, manifests=work / "manifests", shar=work / "shar", tok=str(tok))


def test_export_index_and_round_trip(exported):
    from just_asr.data.dataset import cut_text
    from just_asr.data.features import cut_features
    from just_asr.data.mls import load_manifests
    from just_asr.data.shar import INDEX_NAME, SharIndex, read_shar_cuts

    raw = json.loads((exported.shar / INDEX_NAME).read_text())
    assert raw["fields"] == ["recording", "features"] and raw["shard_size"] == 3
    index = SharIndex.load(exported.shar)
    for lang in LANGS:
        orig = {c.id: c for c in load_manifests(exported.manifests, lang, "train")}
        s = index.get(lang, "train")
        assert s.num_cuts == N_TRAIN and len(s.shards) == 4 and s.shard_size == 3
        assert s.hours == pytest.approx(sum(c.duration for c in orig.values()) / 3600, rel=1e-9)
        for shard in s.shards:  # every listed file exists, named relative to the index
            for rel in shard.values():
                assert (exported.shar / rel).is_file(), rel
        assert index.get(lang, "dev").num_cuts == 2

        back = read_shar_cuts(index, lang, "train", "on-the-fly")  # the audio field
        assert [c.id for c in back] == list(orig)  # same cuts, in manifest order
        for c in back:
            o = orig[c.id]
            assert cut_text(c) == cut_text(o) and c.supervisions[0].language == o.supervisions[0].language
            assert c.duration == pytest.approx(o.duration)
            np.testing.assert_array_equal(c.load_audio(), o.load_audio())

        feats = read_shar_cuts(index, lang, "train", "precomputed")  # the features field
        for c in list(feats)[:4]:
            stored = cut_features(c, "precomputed")
            fresh = cut_features(orig[c.id], "on-the-fly")
            assert stored.shape == fresh.shape
            # lilcom at tick power -5 quantises to steps of 2^-5: error at most half a step
            assert float((stored - fresh).abs().max()) <= 2 ** -6 + 1e-6


def test_slots_partition_each_pass(exported):
    from just_asr.data.shar import SharIndex, epoch_shard_order, slot_cuts

    index = SharIndex.load(exported.shar)
    s = index.get("pl", "train")
    everything = sorted(c.id for c in slot_cuts(index, s, (), epoch=0, slot=0, num_slots=1))
    assert len(everything) == N_TRAIN
    for num_slots in (1, 2, 3, 4, 5, 7):  # 4 shards: split by shard up to 4 slots, by cut beyond
        for epoch in (0, 1):
            per_slot = [[c.id for c in slot_cuts(index, s, (), epoch=epoch, slot=k, num_slots=num_slots, seed=3)]
                        for k in range(num_slots)]
            counts = Counter(c for ids in per_slot for c in ids)
            assert sorted(counts) == everything and set(counts.values()) == {1}, (num_slots, epoch)
    orders = {tuple(epoch_shard_order(4, e, seed=3)) for e in range(6)}
    assert len(orders) > 1  # shards are reshuffled between passes
    assert epoch_shard_order(4, 2, seed=3) == epoch_shard_order(4, 2, seed=3)  # the same on every slot


class _Ids(torch.utils.data.IterableDataset):
    """Yields the cut ids of a :class:`ShardedCutStream` (iterated inside each DataLoader worker)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __iter__(self):
        for cut in self.stream:
            yield cut.id


def test_ranks_and_workers_read_disjoint_shards(exported):
    from just_asr.data.shar import SharIndex, ShardedCutStream

    index = SharIndex.load(exported.shar)
    seen: Counter = Counter()
    for rank in (0, 1):
        stream = ShardedCutStream(index, list(LANGS), "train", (), rank=rank, world_size=2, seed=5, infinite=False)
        loader = torch.utils.data.DataLoader(_Ids(stream), batch_size=None, num_workers=2)
        seen.update(loader)  # 2 ranks x 2 workers = 4 slots over 4 shards per language
    assert len(seen) == 2 * N_TRAIN and set(seen.values()) == {1}


def _tiny_module(tokenizer: str):
    from just_asr.model import ModelConfig
    from just_asr.train.module import JustLightningModule

    arch = ModelConfig.from_dict({
        "frontend": {"conv_channels": 8, "dropout": 0.0},
        "encoder": {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 3, "dropout": 0.0,
                    "attention_dropout": 0.0, "left_max_position": 8, "right_max_position": 2},
        "masking": {"prob": 0.2, "span": 3, "min_spans": 1},
        "quantizer": {"codebook_size": 16, "code_dim": 32},
        "contrastive": {"num_layers": 1, "final_dim": 16, "num_distractors": 4},
        "mlm": {"num_layers": 1},
        "decoder": {"embed_dim": 16, "hidden_dim": 32, "joint_dim": 32, "dropout": 0.0},
        "loss": {"rnnt": 1.0, "ssl": 0.3},
    })
    torch.manual_seed(0)
    return JustLightningModule(arch=arch, tokenizer=tokenizer, lr=1e-3, warmup_steps=1, weight_decay=0.0)


def test_datamodule_batches_and_training_from_shar(exported):
    import lightning.pytorch as pl

    from just_asr.data.dataset import AsrDataset
    from just_asr.data.mls import load_manifests
    from just_asr.data.tokenizer import Tokenizer
    from just_asr.train.datamodule import JustDataModule

    kw = dict(tokenizer=exported.tok, langs=list(LANGS), max_duration=2.0, num_buckets=2, seed=0,
              feature_source="on-the-fly", temperature=2.0)
    shar_dm = JustDataModule(shar_dir=str(exported.shar), **kw)
    jsonl_dm = JustDataModule(str(exported.manifests), **kw)
    shar_batch = next(iter(shar_dm.train_dataloader()))
    jsonl_batch = next(iter(jsonl_dm.train_dataloader()))
    # the same keys, but the jsonl stream's position (exact resume; Shar streams restart on resume)
    assert isinstance(jsonl_batch.pop("stream_index"), int) and "stream_index" not in shar_batch
    assert list(shar_batch) == list(jsonl_batch)
    for k, v in shar_batch.items():
        if torch.is_tensor(v):
            assert v.dtype == jsonl_batch[k].dtype and v.dim() == jsonl_batch[k].dim(), k
    # each row equals what the jsonl dataset computes for the same cut from the original files
    orig = {c.id: c for l in LANGS for c in load_manifests(exported.manifests, l, "train")}
    ref_ds = AsrDataset(Tokenizer(exported.tok), feature_source="on-the-fly")
    for i, cid in enumerate(shar_batch["cut_ids"]):
        from lhotse import CutSet

        ref = ref_ds[CutSet.from_cuts([orig[cid]])]
        n, u = int(shar_batch["feature_lens"][i]), int(shar_batch["target_lens"][i])
        assert n == int(ref["feature_lens"][0]) and u == int(ref["target_lens"][0]) > 0
        torch.testing.assert_close(shar_batch["features"][i, :n], ref["features"][0, :n], rtol=0, atol=0)
        assert torch.equal(shar_batch["targets"][i, :u], ref["targets"][0, :u])
        assert shar_batch["texts"][i] == ref["texts"][0]
        assert float(shar_batch["features"][i, n:].abs().sum()) == 0.0  # padding stays zero

    # two training steps from the shards, then a dev pass read from the shards
    dm = JustDataModule(shar_dir=str(exported.shar), tokenizer=exported.tok, langs=list(LANGS), max_duration=2.0,
                        num_buckets=2, max_dev_cuts_per_lang=1)
    mod = _tiny_module(exported.tok)
    losses: list[float] = []

    class Rec(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(pl_module.last_loss))

    dev_cuts = dm.dev_cuts()
    assert sorted(c.id for c in dev_cuts) == sorted(
        next(iter(load_manifests(exported.manifests, l, "dev"))).id for l in LANGS)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         val_check_interval=2, callbacks=[Rec()])
    trainer.fit(mod, datamodule=dm)
    assert trainer.global_step == 2 and len(losses) == 2 and all(np.isfinite(losses))
    assert "dev/wer_avg" in trainer.callback_metrics


def test_bad_index_names_file_and_line(tmp_path, exported):
    from just_asr.data.shar import INDEX_NAME, SharIndex

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / INDEX_NAME).write_text('{\n "format": "just-asr-shar",\n "version": 1,\n "fields": [,]\n}\n')
    with pytest.raises(ValueError, match=rf"{INDEX_NAME}: line 4: not valid JSON"):
        SharIndex.load(bad)
    with pytest.raises(ValueError, match="Shar index not found"):
        SharIndex.load(tmp_path / "nowhere")
    index = SharIndex.load(exported.shar)
    with pytest.raises(ValueError, match=r"no Shar shards for language 'fr', split 'train'"):
        index.get("fr", "train")
    audio_only = SharIndex.from_dict({**json.loads((exported.shar / INDEX_NAME).read_text()), "fields": ["recording"]},
                                     root=str(exported.shar), source="x.json")
    with pytest.raises(ValueError, match="needs features"):
        audio_only.read_fields("precomputed")


def test_export_reports_unusable_audio_in_one_line(tmp_path):
    """A corrupt and a truncated recording: each skipped and reported with the project's own one-line
    diagnosis (lhotse's error runs to several lines of backends and call arguments); the rest exported;
    an unreadable manifest names its file."""
    from data_helpers import write_mls_corpus

    from just_asr.data.errors import ErrorCollector
    from just_asr.data.mls import prepare_mls
    from just_asr.data.shar import export_shar

    spec = write_mls_corpus(tmp_path / "corpus", langs=("pl",), splits={"train": 4, "dev": 1})
    prepare_mls(tmp_path / "corpus", tmp_path / "man", langs=["pl"], progress=False)
    ids = spec.ids[("pl", "train")]
    spec.paths[ids[0]].write_bytes(b"not audio at all" * 64)
    data = spec.paths[ids[1]].read_bytes()
    spec.paths[ids[1]].write_bytes(data[: len(data) // 3])
    errors = ErrorCollector()
    report = export_shar(tmp_path / "man", tmp_path / "shar", langs="pl", splits=["train"], errors=errors)
    problems = {e.path: e.problem for e in errors.skipped}
    assert set(problems) == {str(spec.paths[ids[0]]), str(spec.paths[ids[1]])}
    assert all("\n" not in p for p in problems.values())
    assert "cannot read audio" in problems[str(spec.paths[ids[0]])]
    assert "truncated" in problems[str(spec.paths[ids[1]])]
    assert report.written == {("pl", "train"): 2}
    bad = tmp_path / "badman"
    bad.mkdir()
    (bad / "mls-pl_cuts_train.jsonl.gz").write_bytes((tmp_path / "man" / "mls-pl_cuts_train.jsonl.gz").read_bytes()[:60])
    with pytest.raises(ValueError, match=r"mls-pl_cuts_train\.jsonl\.gz: unreadable cut manifest"):
        export_shar(bad, tmp_path / "shar2", langs="pl", splits=["train"])
