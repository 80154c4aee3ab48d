"""Decoding speed benchmark: real-time factor of greedy and beam search, encoder and search timed
apart, on a trained model with the WER of each search beside its speed, or on a random model.

Run (from the repository root; results go in BENCHMARKS.md)::

    # a trained model directory on cut manifests (the demo test set): speed and WER per method
    .venv/bin/python benchmarks/decode.py --model DIR --cuts MANIFEST [MANIFEST ...] --beams 1,4 --threads 1

    # a randomly initialised model of a preset size on synthetic features (search speed only)
    .venv/bin/python benchmarks/decode.py --config configs/model/tiny.yaml --threads 2
    .venv/bin/python benchmarks/decode.py --config configs/model/tiny.yaml --threads 2 --blank-bias 4

RTF = processing seconds / audio seconds (features are 10 ms frames, so the audio length of a batch
is ``sum(feature_lens) / 100`` seconds).

Trained-model mode (``--model``): the cuts of all manifests are read once and turned into the
evaluation batches of ``just-asr decode`` (:func:`just_asr.data.loader.make_eval_dataloader`, the
model's own feature recipe and CMVN); that feature pass is timed and reported on its own, and the
features stay in memory. Then, per repeat, the encoder runs over every batch (encoder time), and
each search (greedy, then every ``--beams`` size) runs over the stored encoder outputs (search
time), pooled as ``just-asr decode`` pools them: consecutive batches until ``--search-batch``
utterances per search (0: one search per encoder batch, the behaviour before pooling). Each figure is the median over ``--repeats`` repeats, after one untimed
warm-up pass over the first batch (run under ``FlopCounterMode``: the header gives the encoder's GFLOP
per audio second, matmuls/convolutions/attention). The table gives, per method: audio seconds, encoder RTF, search
RTF, total RTF (encoder + search), the search and total time as a multiple of greedy's, the units
emitted per second of audio, and the WER (%) as the unweighted average over languages and per
language (:func:`just_asr.evaluate.score_by_language`; cuts without a reference text are decoded
but not scored). Beam search with beam 1 must make exactly greedy's choices: the script checks
that it gives the same unit ids for every utterance and exits with status 1 if it does not.

Random-model mode (``--config``, the default): a random model emits far more units than a trained
one (whose joiner mostly says blank); ``--blank-bias`` adds to the blank logit to mimic a trained
model's emission rate, and the script prints the units emitted per second of audio so runs can be
compared. Timings are the best of ``--repeats`` runs, all inside one process.

``--malloc tuned`` starts with :func:`just_asr.runtime.tune_malloc`, as ``JUST_ASR_MALLOC_TUNING=1
just-asr decode`` does; ``--malloc default`` (the default) keeps glibc's settings (an allocator
setting is compared across runs, alternating the two).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from just_asr.decode import DEFAULT_MAX_SYMBOLS_PER_FRAME, beam_search, greedy_search
from just_asr.model import JustModel, load_model_config

FRAMES_PER_SECOND = 100.0  # both feature recipes use a 10 ms frame shift


def _parse_beams(text: str) -> list[int]:
    try:
        beams = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--beams must be comma-separated integers, got {text!r}") from None
    if not beams or any(b < 1 for b in beams):
        raise ValueError(f"--beams must list beam sizes >= 1, got {text!r}")
    return beams


def _sync(device: torch.device | str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# trained-model mode
# ----------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One evaluation batch, features already normalised with the model's CMVN.

    ``features: (B, T, 80)`` float32 on the model's device, ``lens: (B,)`` valid frames per row;
    ``cut_ids``, ``texts`` (reference, ``""`` when none) and ``langs`` (ISO code) have ``B`` entries.
    """

    features: Tensor
    lens: Tensor
    cut_ids: list[str]
    texts: list[str]
    langs: list[str]


@dataclass
class MethodResult:
    """Timings (seconds, medians over repeats) and scores of one search method."""

    name: str
    beam: int  # 0 for greedy
    search_seconds: float
    search_runs: list[float]
    tokens: dict[str, list[int]]  # cut id -> unit ids
    wer: float | None  # unweighted average over languages, in %
    wer_by_lang: dict[str, float | None]  # in %


@dataclass
class TrainedBenchmark:
    """Everything the trained-model mode measured (see the module docstring)."""

    num_utts: int
    num_batches: int
    num_scored: int
    audio_seconds: float
    feature_seconds: float
    encoder_seconds: float
    encoder_runs: list[float]
    encoder_gflop_per_audio_second: float = float("nan")  # FlopCounterMode over the first batch
    methods: list[MethodResult] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    beam1_mismatches: int | None = None  # utterances where beam 1 differs from greedy
    num_searches: int = 0  # search calls per pass (encoder batches pooled up to search_batch utterances)
    search_batch: int = 0

    @property
    def beam1_ok(self) -> bool:
        return self.beam1_mismatches == 0


def _select_cuts(cuts, max_per_lang: int | None):
    """The first ``max_per_lang`` cuts of each language, in manifest order (all when ``None``)."""
    from lhotse import CutSet

    from just_asr.data.dataset import cut_language

    if max_per_lang is None:
        return cuts
    taken: dict[str, int] = {}
    keep = []
    for c in cuts:
        lang = cut_language(c)
        if taken.get(lang, 0) < max_per_lang:
            taken[lang] = taken.get(lang, 0) + 1
            keep.append(c)
    return CutSet.from_cuts(keep)


def _median_timed(fn: Callable[[], object], repeats: int, device) -> tuple[float, list[float], object]:
    """Run ``fn`` ``repeats`` times; return the median wall time, all times and the last output."""
    runs: list[float] = []
    out = None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs, out


def load_batches(loaded, cuts, manifests: Sequence[str | Path], max_duration: float, device: str = "cpu") -> list[Batch]:
    """``just-asr decode``'s evaluation batches of ``cuts`` for the loaded model (its feature recipe;
    its CMVN applied here), on ``device``. Unreadable audio is reported on stderr and left out;
    raises ``ValueError`` (naming ``manifests``) when nothing could be featurised."""
    from just_asr.data.dataset import cut_language
    from just_asr.data.errors import DataError
    from just_asr.data.loader import make_eval_dataloader

    # lhotse warns that an eagerly read CutSet gains nothing from its dynamic bucketing: true, and harmless
    warnings.filterwarnings("ignore", message="You are using DynamicBucketingSampler with an eagerly read CutSet")
    loader = make_eval_dataloader(cuts, None, max_duration=max_duration, cmvn=None,
                                  feature_source=loaded.feature_source or "auto",
                                  min_frames=loaded.model.frontend.min_input_frames)
    langs_by_id = {c.id: cut_language(c) for c in cuts}
    batches: list[Batch] = []
    it = iter(loader)
    while True:
        try:
            b = next(it)
        except StopIteration:
            break
        except DataError as exc:  # a batch whose every cut was unreadable
            print(f"error: {exc}", file=sys.stderr)
            continue
        feats = b["features"].to(device, torch.float32)
        lens = b["feature_lens"].to(device, torch.int64)
        if loaded.cmvn is not None:
            feats = loaded.cmvn.apply(feats, lens)
        batches.append(Batch(feats, lens, list(b["cut_ids"]), list(b["texts"]),
                             [langs_by_id[i] for i in b["cut_ids"]]))
    _sync(device)
    errors = getattr(loader, "errors", None)
    for issue in errors.issues if errors is not None else []:  # unreadable audio: left out, reported
        print(f"error: {issue}", file=sys.stderr)
    if not batches:
        raise ValueError(f"{', '.join(map(str, manifests))}: no cut could be featurised")
    return batches


def run_trained(
    model_dir: str | Path,
    manifests: Sequence[str | Path],
    beams: Sequence[int] = (4,),
    repeats: int = 3,
    max_utts_per_lang: int | None = None,
    max_duration: float = 200.0,
    max_symbols_per_frame: int = DEFAULT_MAX_SYMBOLS_PER_FRAME,
    device: str = "cpu",
    length_norm: bool = False,
    encoder_dtype: str = "float32",
    search_batch: int = 256,
    encoder_workers: int = 1,
    search_threads: int | None = None,
) -> TrainedBenchmark:
    """Time encoder and searches of the model in ``model_dir`` on the cuts of ``manifests``
    (``length_norm``: beam searches rank by score per unit, as ``just-asr decode --length-norm``;
    ``encoder_dtype``, ``search_batch`` and ``encoder_workers`` as ``just-asr decode``'s options:
    the encoder outputs of consecutive batches are pooled until ``search_batch`` utterances, 0 =
    one search per encoder batch). ``search_threads``: torch threads of the last search, as
    ``just-asr decode`` gives a search that starts when no batch is being encoded (here the earlier
    searches are taken to start while the workers are still busy, on the current setting: the
    command's case when encoding is the slower part).

    Raises ``ValueError`` (naming the file) for a missing or unreadable manifest or model
    directory, and when no utterance could be featurised.
    """
    from just_asr.data.loader import read_cut_manifests
    from just_asr.data.dataset import cut_language
    from just_asr.evaluate import score_by_language
    from just_asr.evaluate.metrics import language_order
    from just_asr.inference import Transcriber, load_model_dir, pool_for_search

    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    if max_utts_per_lang is not None and max_utts_per_lang < 1:
        raise ValueError(f"--max-utts-per-lang must be >= 1, got {max_utts_per_lang}")
    if max_duration <= 0:
        raise ValueError(f"--max-duration must be positive, got {max_duration}")
    if search_batch < 0:
        raise ValueError(f"--search-batch must be >= 0, got {search_batch}")
    loaded = load_model_dir(model_dir, device=device)
    loaded.model.eval()
    cuts = _select_cuts(read_cut_manifests([str(m) for m in manifests]), max_utts_per_lang)
    if len(cuts) == 0:
        raise ValueError(f"{', '.join(map(str, manifests))}: the manifests hold no cuts")
    langs_by_id = {c.id: cut_language(c) for c in cuts}
    has_ref = {c.id: any(s.text is not None and s.text.strip() for s in c.supervisions) for c in cuts}

    # 1. features, once, before any timing (CMVN as the model directory records it)
    start = time.perf_counter()
    batches = load_batches(loaded, cuts, manifests, max_duration, device)
    feature_seconds = time.perf_counter() - start
    audio = sum(float(b.lens.sum()) for b in batches) / FRAMES_PER_SECOND

    # 2. encoder: warm up on one batch, then every batch per repeat; just-asr decode's code path
    # (Transcriber.encode: autocast for bfloat16, output in float32 for the search)
    # (encode_stream: up to encoder_workers batches at once, in threads)
    encoder = Transcriber(loaded, encoder_dtype=encoder_dtype, encoder_workers=encoder_workers)

    def encode(b: Batch) -> tuple[Tensor, Tensor]:
        return encoder.encode(b.features, b.lens, apply_cmvn=False)  # CMVN applied above

    def encode_all() -> list[tuple[Tensor, Tensor]]:
        stream = encoder.encode_stream(((b.features, b.lens, None) for b in batches), apply_cmvn=False)
        return [(enc, enc_lens) for _, enc, enc_lens in stream]

    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        with FlopCounterMode(display=False) as flops:  # also the warm-up
            encode(batches[0])
        enc_gflop = flops.get_total_flops() / 1e9 / (float(batches[0].lens.sum()) / FRAMES_PER_SECOND)
        if encoder_workers > 1:
            encode_all()  # untimed: the worker threads' first calls (per-thread set-up) as well
        t_enc, enc_runs, encoded = _median_timed(encode_all, repeats, device)

    # 3. searches on the stored encoder output
    scored_ids = sorted(i for b in batches for i in b.cut_ids if has_ref[i])
    refs = {i: t for b in batches for i, t in zip(b.cut_ids, b.texts, strict=True)}
    present_langs = language_order(sorted({langs_by_id[i] for i in scored_ids}))

    # the search pools: consecutive encoder batches until search_batch utterances, as just-asr decode
    groups = list(pool_for_search(((b.cut_ids, *enc) for b, enc in zip(batches, encoded, strict=True)),
                                  search_batch))

    def search(beam: int):
        opts = dict(method="greedy" if beam == 0 else "beam", beam=max(beam, 1),
                    max_symbols_per_frame=max_symbols_per_frame, length_norm=length_norm and beam > 0)
        searcher = Transcriber(loaded, **opts)
        last_searcher = Transcriber(loaded, search_threads=search_threads, **opts)

        def one_pass() -> dict[str, list[int]]:
            out: dict[str, list[int]] = {}
            for i, group in enumerate(groups):
                r = (last_searcher if i == len(groups) - 1 else searcher).search_pooled([(enc, enc_lens) for _, enc, enc_lens in group])
                ids = [cut_id for cut_ids, _, _ in group for cut_id in cut_ids]
                for cut_id, toks in zip(ids, r.tokens, strict=True):
                    out[cut_id] = list(toks)
            return out

        return one_pass

    result = TrainedBenchmark(
        num_utts=sum(len(b.cut_ids) for b in batches), num_batches=len(batches), num_scored=len(scored_ids), audio_seconds=audio,
        feature_seconds=feature_seconds, encoder_seconds=t_enc, encoder_runs=enc_runs, languages=present_langs,
        encoder_gflop_per_audio_second=enc_gflop, num_searches=len(groups), search_batch=search_batch,
    )
    with torch.no_grad():
        for beam in [0, *beams]:
            fn = search(beam)
            fn()  # warm-up: one untimed pass of the same pooled searches that are then timed
            t, runs, tokens = _median_timed(fn, repeats, device)
            report = score_by_language([refs[i] for i in scored_ids],
                                       [loaded.tokenizer.decode(tokens[i]) for i in scored_ids],
                                       [langs_by_id[i] for i in scored_ids]) if scored_ids else None
            pct = (lambda v: None if v is None else 100.0 * v)
            result.methods.append(MethodResult(
                name="greedy" if beam == 0 else f"beam {beam}", beam=beam, search_seconds=t, search_runs=runs,
                tokens=tokens, wer=pct(report.average_wer) if report else None,
                wer_by_lang={l.language: pct(l.wer) for l in report.languages} if report else {},
            ))
        greedy_tokens = result.methods[0].tokens
        beam1 = next((m.tokens for m in result.methods if m.beam == 1), None)
        if beam1 is None:  # not asked for: run it once, untimed, for the check
            beam1 = search(1)()
        result.beam1_mismatches = sum(greedy_tokens[i] != beam1[i] for i in greedy_tokens)
    return result


def format_trained(res: TrainedBenchmark) -> str:
    """The Markdown table (plus a header line and the beam-1 check) of a :class:`TrainedBenchmark`."""
    audio = res.audio_seconds
    greedy = res.methods[0]

    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    head = ["method", "audio s", "encoder RTF", "search RTF", "total RTF", "search x greedy", "total x greedy",
            "units/s", "WER avg %", *[f"WER {l} %" for l in res.languages]]
    lines = [
        f"{res.num_utts} utterances ({res.num_scored} scored) in {res.num_batches} encoder batches and "
        f"{res.num_searches} searches (search batch {res.search_batch}), {audio:.1f} s of audio; features "
        f"(not in the table) RTF {res.feature_seconds / audio:.5f}; median of {len(res.encoder_runs)} repeats; "
        f"encoder {res.encoder_gflop_per_audio_second:.3f} GFLOP per audio second (FlopCounterMode, first batch)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in res.methods:
        total = res.encoder_seconds + m.search_seconds
        units = sum(len(t) for t in m.tokens.values()) / audio
        row = [m.name, f"{audio:.1f}", f"{res.encoder_seconds / audio:.5f}", f"{m.search_seconds / audio:.5f}",
               f"{total / audio:.5f}", f"{m.search_seconds / greedy.search_seconds:.2f}",
               f"{total / (res.encoder_seconds + greedy.search_seconds):.2f}", f"{units:.1f}",
               fmt(m.wer, ".2f"), *[fmt(m.wer_by_lang.get(l), ".2f") for l in res.languages]]
        lines.append("| " + " | ".join(row) + " |")
    spread = "; ".join(f"{m.name} {min(m.search_runs) / audio:.5f}-{max(m.search_runs) / audio:.5f}"
                       for m in res.methods)
    lines += ["", f"spread over repeats (min-max RTF): encoder {min(res.encoder_runs) / audio:.5f}-"
                  f"{max(res.encoder_runs) / audio:.5f}; search: {spread}"]
    n = len(greedy.tokens)
    verdict = "PASS" if res.beam1_ok else "FAIL"
    lines += ["", f"beam-1 check: {verdict} (beam 1 and greedy give the same units on "
                  f"{n - (res.beam1_mismatches or 0)} of {n} utterances)"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# random-model mode
# ----------------------------------------------------------------------------------------------


def run_random(args: argparse.Namespace) -> None:
    """Search speed of a randomly initialised model on synthetic features (see the module docstring)."""
    torch.manual_seed(args.seed)
    cfg = load_model_config(args.config)
    model = JustModel(cfg, args.vocab_size).to(args.device).eval()
    with torch.no_grad():
        model.joiner.encoder_proj.weight.mul_(args.enc_scale)
        model.joiner.output.bias[0] += args.blank_bias
    frames = torch.randint(int(args.seconds * 75), int(args.seconds * 125) + 1, (args.batch,))
    feats = torch.randn(args.batch, int(frames.max()), 80, device=args.device)
    lens = frames.to(args.device)
    audio = float(frames.sum()) / FRAMES_PER_SECOND

    def best(fn):
        times = []
        for _ in range(args.repeats):
            _sync(args.device)
            t = time.perf_counter()
            out = fn()
            _sync(args.device)
            times.append(time.perf_counter() - t)
        return min(times), out

    with torch.no_grad():
        t_enc, (enc, enc_lens) = best(lambda: model.encode(feats, lens))
    n = args.max_symbols_per_frame
    t_greedy, g = best(lambda: greedy_search(model.predictor, model.joiner, enc, enc_lens, 0, n))
    units = sum(len(t) for t in g.tokens) / audio
    print(f"model {args.config} vocab {args.vocab_size}; {args.batch} utts, {audio:.1f} s audio, "
          f"{int(enc_lens.max())} encoder frames max; threads {args.threads}; device {args.device}")
    print(f"encoder           RTF {t_enc / audio:.5f}")
    print(f"greedy search     RTF {t_greedy / audio:.5f}   (+encoder {(t_greedy + t_enc) / audio:.5f}); "
          f"{units:.1f} units/s of audio")
    for beam in _parse_beams(args.beams):
        t_beam, r = best(lambda: beam_search(model.predictor, model.joiner, enc, enc_lens, 0, beam=beam,
                                             max_symbols_per_frame=n))
        units = sum(len(t) for t in r.tokens) / audio
        print(f"beam {beam:<2d} search    RTF {t_beam / audio:.5f}   (+encoder {(t_beam + t_enc) / audio:.5f}); "
              f"{units:.1f} units/s of audio")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="DIR", help="trained model directory (just-asr export): trained-model mode")
    p.add_argument("--cuts", nargs="+", metavar="MANIFEST", help="lhotse cut manifests (with --model)")
    p.add_argument("--max-utts-per-lang", type=int, default=None,
                   help="with --model: the first N cuts of each language only (default: all)")
    p.add_argument("--max-duration", type=float, default=200.0,
                   help="with --model: seconds of audio per batch, as in just-asr decode (default: 200)")
    p.add_argument("--config", default="configs/model/tiny.yaml", help="random-model mode: model preset")
    p.add_argument("--vocab-size", type=int, default=256, help="random-model mode")
    p.add_argument("--batch", type=int, default=16, help="random-model mode: utterances per batch")
    p.add_argument("--seconds", type=float, default=10.0, help="random-model mode: mean utterance length")
    p.add_argument("--beams", default="4", help="comma-separated beam sizes (default: 4)")
    p.add_argument("--max-symbols-per-frame", type=int, default=None,
                   help=f"most units per encoder frame (default: {DEFAULT_MAX_SYMBOLS_PER_FRAME} with --model, "
                        "3 for a random model)")
    p.add_argument("--blank-bias", type=float, default=0.0, help="random-model mode: added to the blank logit")
    p.add_argument("--enc-scale", type=float, default=1.0,
                   help="random-model mode: multiplies the joiner's encoder projection (a random model's logits "
                        "barely depend on the frame; scaling this makes blank/non-blank vary from frame to frame)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default: 3)")
    p.add_argument("--length-norm", action="store_true",
                   help="trained-model mode: beam searches rank by score per unit (as the demo decodes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoder-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="trained-model mode: run the encoder under bf16 autocast (the search stays float32)")
    p.add_argument("--search-batch", type=int, default=256,
                   help="trained-model mode: utterances per search, pooling consecutive encoder batches as "
                        "just-asr decode --search-batch does; 0 = one search per encoder batch (default: 256)")
    p.add_argument("--encoder-workers", type=int, default=1,
                   help="trained-model mode: batches encoded at once in threads, torch threads = --threads / N "
                        "(the last search: --threads), as just-asr decode --encoder-workers (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random-model mode")
    p.add_argument("--malloc", choices=("default", "tuned"), default="default",
                   help="default: glibc's own malloc settings, as just-asr decode; tuned: just_asr.runtime.tune_malloc() "
                        "first, as JUST_ASR_MALLOC_TUNING=1 just-asr decode (compare in separate runs)")
    args = p.parse_args(argv)

    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    try:
        beams = _parse_beams(args.beams)
    except ValueError as exc:
        p.error(str(exc))
    if args.encoder_workers < 1:
        p.error(f"--encoder-workers must be >= 1, got {args.encoder_workers}")
    if args.malloc == "tuned":
        from just_asr.runtime import tune_malloc

        try:
            tune_malloc()
        except ValueError as exc:
            p.error(str(exc))
        from just_asr import runtime

        print(f"malloc: {runtime.applied}")
    torch.set_num_threads(max(1, args.threads // args.encoder_workers))
    if args.model is None:
        if args.cuts:
            p.error("--cuts needs --model")
        if args.max_symbols_per_frame is None:
            args.max_symbols_per_frame = 3
        run_random(args)
        return 0
    if not args.cuts:
        p.error("--model needs --cuts MANIFEST [MANIFEST ...]")
    from just_asr.inference import ModelDirError

    if args.max_symbols_per_frame is None:
        args.max_symbols_per_frame = DEFAULT_MAX_SYMBOLS_PER_FRAME
    try:
        res = run_trained(
            args.model, args.cuts, beams=beams, repeats=args.repeats, max_utts_per_lang=args.max_utts_per_lang,
            max_duration=args.max_duration, device=args.device,
            max_symbols_per_frame=args.max_symbols_per_frame, length_norm=args.length_norm,
            encoder_dtype=args.encoder_dtype, search_batch=args.search_batch, encoder_workers=args.encoder_workers,
            search_threads=args.threads if args.encoder_workers > 1 else None,
        )
    except (ModelDirError, ValueError, OSError) as exc:
        print(f"benchmarks/decode.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"model {args.model}; threads {args.threads}; device {args.device}; "
          f"max symbols per frame {args.max_symbols_per_frame}; encoder {args.encoder_dtype}; "
          f"search batch {args.search_batch}; encoder workers {args.encoder_workers} x "
          f"{torch.get_num_threads()} torch threads"
          + (f" (the last search: {args.threads} threads, as just-asr decode)" if args.encoder_workers > 1 else ""))
    print(format_trained(res), end="")
    return 0 if res.beam1_ok else 1


if __name__ == "__main__":
    sys.exit(main())
