"""``just-asr decode --model DIR --cuts MANIFEST... --out DIR``: decode test cuts, score per language.

Writes into ``OUT``:

* ``hyp_<lang>.txt`` and ``ref_<lang>.txt``: ``<cut id>\\t<text>`` lines (MLS's transcript form),
  sorted by cut id, one pair of files per language (ISO code of the cut's supervision language);
* ``wer.md``, ``wer.json``, ``wer.png``: per-language WER and CER with S/D/I counts, the
  unweighted average over languages and the pooled total (see :mod:`just_asr.evaluate`);

and prints the Markdown table. Cuts without a reference text are decoded (their hypotheses are
written) but not scored. Cuts whose audio cannot be read are reported on stderr and left out; the
exit status is then 1 (the report covers the rest), 2 for unusable arguments or model directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from just_asr.decode import DEFAULT_MAX_SYMBOLS_PER_FRAME


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory (just-asr export)")
    parser.add_argument("--cuts", required=True, nargs="+", metavar="MANIFEST",
                        help="lhotse cut manifests (e.g. mls-pl_cuts_test.jsonl.gz), any number")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--method", choices=("greedy", "beam"), default="greedy", help="search (default: greedy)")
    parser.add_argument("--beam", type=int, default=4, help="beam size for --method beam (default: 4)")
    parser.add_argument("--max-symbols-per-frame", type=int, default=DEFAULT_MAX_SYMBOLS_PER_FRAME,
                        help=f"most units per encoder frame (default: {DEFAULT_MAX_SYMBOLS_PER_FRAME})")
    parser.add_argument("--length-norm", action="store_true", help="beam search: rank by score per unit")
    parser.add_argument("--max-duration", type=float, default=200.0,
                        help="seconds of audio per batch (default: 200)")
    parser.add_argument("--search-batch", type=int, default=256, metavar="N",
                        help="utterances per search: encoder outputs of consecutive batches are pooled until "
                             "N, then searched at once (fewer frame steps; same result); 0 = one search per "
                             "encoder batch (default: 256)")
    parser.add_argument("--encoder-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="encoder precision: bfloat16 runs it under autocast, 1.3-1.5x faster on CPUs with "
                             "AVX-512 bf16, WER within about a point (the search stays float32; default: float32)")
    parser.add_argument("--encoder-workers", type=int, default=1, metavar="N",
                        help="encode N batches at once in threads; torch then gets --threads/N threads (and so does "
                             "a search that starts while batches are being encoded; one that starts when none "
                             "is, e.g. the only search of a small test set, gets all --threads), so --threads "
                             "must be at least N (2 on a 2-core CPU: 1.2-1.3x faster "
                             "encoding of a small model; wer.json's encode_seconds then sums the workers' times; "
                             "default: 1)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's choice; 1 is often fastest on busy machines)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes (default: 0)")
    parser.add_argument("--feature-source", choices=("auto", "precomputed", "on-the-fly", "seamless"), default="auto",
                        help="stored features when the cuts have them (auto), or always from audio; a model "
                             "whose directory records the SeamlessM4T recipe always uses it")


def _write_lines(path: Path, items: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for cut_id, text in sorted(items):
            fh.write(f"{cut_id}\t{text}\n")


def run(args: argparse.Namespace) -> int:
    from just_asr.runtime import tune_malloc_for_command

    if not tune_malloc_for_command("decode"):
        return 2
    from just_asr.data.dataset import cut_language, cut_source
    from just_asr.data.loader import make_eval_dataloader, read_cut_manifests
    from just_asr.evaluate import format_markdown, score_by_language, write_reports
    from just_asr.inference import ModelDirError, Transcriber, load_model_dir, pool_for_search

    if args.threads is not None and args.threads < 1:
        print(f"just-asr decode: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.encoder_workers < 1:
        print(f"just-asr decode: error: --encoder-workers must be >= 1, got {args.encoder_workers}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < args.encoder_workers:
        print(f"just-asr decode: error: --encoder-workers {args.encoder_workers} needs --threads >= "
              f"{args.encoder_workers} (each worker gets --threads/N torch threads), got {args.threads}", file=sys.stderr)
        return 2
    search_threads = None
    if args.threads is not None or args.encoder_workers > 1:
        import torch

        total = args.threads if args.threads is not None else torch.get_num_threads()
        torch.set_num_threads(max(1, total // args.encoder_workers))
        if args.encoder_workers > 1:
            search_threads = total  # a search that starts while no batch is being encoded uses every thread
    try:
        if not args.max_duration > 0:  # NaN too
            raise ValueError(f"--max-duration must be positive, got {args.max_duration}")
        if args.search_batch < 0:
            raise ValueError(f"--search-batch must be >= 0, got {args.search_batch}")
        if args.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
        loaded = load_model_dir(args.model, device=args.device)
        transcriber = Transcriber(
            loaded, method=args.method, beam=args.beam, max_symbols_per_frame=args.max_symbols_per_frame,
            length_norm=args.length_norm, encoder_dtype=args.encoder_dtype, encoder_workers=args.encoder_workers,
            search_threads=search_threads,
        )
        cuts = read_cut_manifests(args.cuts)
        try:  # before decoding: a bad --out should not cost the whole run
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{args.out}: cannot create the output folder ({exc.strerror or exc})") from None
    except (ModelDirError, ValueError, OSError) as exc:
        print(f"just-asr decode: error: {exc}", file=sys.stderr)
        return 2
    if len(cuts) == 0:
        print(f"just-asr decode: error: the manifests hold no cuts ({', '.join(args.cuts)})", file=sys.stderr)
        return 2
    feature_source = args.feature_source
    if loaded.feature_source is not None:
        # the model directory fixes its own feature recipe (e.g. an imported w2v-BERT 2.0 encoder)
        if feature_source not in ("auto", loaded.feature_source):
            print(f"just-asr decode: error: --feature-source {feature_source} conflicts with the model's "
                  f"recorded recipe {loaded.feature_type!r} ({args.model}/config.yaml)", file=sys.stderr)
            return 2
        feature_source = loaded.feature_source
    elif feature_source == "seamless":
        print(f"just-asr decode: error: --feature-source seamless, but {args.model}/config.yaml records the "
              f"{loaded.feature_type!r} recipe", file=sys.stderr)
        return 2
    has_ref = {c.id: any(s.text is not None and s.text.strip() for s in c.supervisions) for c in cuts}
    langs_by_id = {c.id: cut_language(c) for c in cuts}

    # features without CMVN from the loader; the transcriber applies the model's own CMVN
    loader = make_eval_dataloader(
        cuts, None, max_duration=args.max_duration, num_workers=args.num_workers, cmvn=None,
        feature_source=feature_source, min_frames=loaded.model.frontend.min_input_frames,
    )
    hyps: dict[str, str] = {}
    refs: dict[str, str] = {}
    audio_seconds = 0.0
    start = time.perf_counter()
    def usable_batches():
        nonlocal audio_seconds
        # a batch whose every cut was unusable is reported and left out by the loader (its cuts are
        # listed as failed below)
        for batch in loader:
            audio_seconds += float(batch["feature_lens"].sum()) * 0.01
            for cut_id, ref in zip(batch["cut_ids"], batch["texts"], strict=True):
                refs[cut_id] = ref
            yield batch["features"], batch["feature_lens"], list(batch["cut_ids"])

    # encoder outputs of consecutive batches, pooled until --search-batch utterances, searched at once
    for pool in pool_for_search(transcriber.encode_stream(usable_batches()), args.search_batch):
        result = transcriber.search_pooled([(enc, enc_lens) for _, enc, enc_lens in pool])
        ids = [cut_id for cut_ids, _, _ in pool for cut_id in cut_ids]
        for cut_id, tokens in zip(ids, result.tokens, strict=True):
            hyps[cut_id] = loaded.tokenizer.decode(tokens)
    elapsed = time.perf_counter() - start

    out = Path(args.out)
    by_lang: dict[str, list[str]] = {}
    for cut_id in hyps:
        by_lang.setdefault(langs_by_id[cut_id], []).append(cut_id)
    for lang, ids in by_lang.items():
        _write_lines(out / f"hyp_{lang}.txt", [(i, hyps[i]) for i in ids])
        _write_lines(out / f"ref_{lang}.txt", [(i, refs[i]) for i in ids if has_ref[i]])

    scored = sorted(i for i in hyps if has_ref[i])
    report = score_by_language([refs[i] for i in scored], [hyps[i] for i in scored], [langs_by_id[i] for i in scored])
    missing = sorted(set(has_ref) - set(hyps))
    unscored = len(hyps) - len(scored)
    info = {
        "model": str(Path(args.model)),
        "cuts": [str(p) for p in args.cuts],
        "method": args.method,
        "beam": args.beam if args.method == "beam" else 1,
        "max_symbols_per_frame": args.max_symbols_per_frame,
        "length_norm": bool(args.length_norm) if args.method == "beam" else False,
        "encoder_dtype": args.encoder_dtype,
        "search_batch": args.search_batch,
        "encoder_workers": args.encoder_workers,
        "num_cuts": len(cuts),
        "num_decoded": len(hyps),
        "num_scored": len(scored),
        "num_without_reference": unscored,
        "failed_cuts": missing,
        "audio_seconds": round(audio_seconds, 3),
        "decode_seconds": round(elapsed, 3),
        "rtf": round(elapsed / audio_seconds, 5) if audio_seconds > 0 else None,
        "encode_seconds": round(transcriber.timings["encode"], 3),
        "search_seconds": round(transcriber.timings["search"], 3),
    }
    title = f"{args.method}{f' (beam {args.beam})' if args.method == 'beam' else ''} on {len(scored)} utterances"
    write_reports(report, out, extra=info, title=title)
    print(format_markdown(report, title), end="")
    print(f"\nRTF {info['rtf']} ({elapsed:.2f} s for {audio_seconds:.1f} s of audio); reports in {out}", file=sys.stderr)
    if unscored:
        print(f"just-asr decode: {unscored} cuts have no reference text: decoded, not scored", file=sys.stderr)
    if missing:
        errors = getattr(loader, "errors", None)
        issues = errors.issues if errors is not None else []
        for issue in issues:
            print(f"error: {issue}", file=sys.stderr)
        # the loader's collector holds every report, the workers' included; a report of a left-out
        # batch names only its first cut ids: name every failed cut's file that no report named
        said_paths = {i.path for i in issues}
        said_words = {w.strip(",;:()") for i in issues for w in i.problem.split()}
        by_id = {c.id: c for c in cuts}
        for cut_id in missing:
            source = cut_source(by_id[cut_id])
            if cut_id not in said_words and source not in said_paths:
                print(f"error: {source}: cut {cut_id} could not be used (see the reports above)", file=sys.stderr)
        print(f"just-asr decode: {len(missing)} of {len(cuts)} cuts could not be decoded (listed in wer.json); "
              "the report covers the rest", file=sys.stderr)
        return 1
    return 0
