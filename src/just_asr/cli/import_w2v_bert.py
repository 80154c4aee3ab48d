"""``just-asr import-w2v-bert HF_DIR OUT_DIR``: a Hugging Face w2v-BERT 2.0 encoder as a just-asr model.

``HF_DIR`` holds a ``Wav2Vec2BertModel`` as ``save_pretrained`` writes it (``config.json`` and
``model.safetensors``, or safetensors shards with their index), e.g. the public checkpoint::

    hf download facebook/w2v-bert-2.0 --local-dir w2v-bert-2.0   # (older hubs: huggingface-cli download)
    just-asr import-w2v-bert w2v-bert-2.0 exp/w2v-bert-2.0-import --tokenizer data/tokenizer/tokenizer.model

The first ``--contrastive-layers`` (8) HF layers become the contrastive stack and the rest (16) the
MLM stack; the quantiser, projection heads, MLM head and RNN-T decoder start fresh. The command
prints the imported / fresh / unused tensor lists (also written to ``OUT_DIR/import_report.json``).

The decoder's output size comes from ``--tokenizer`` (a just-asr SentencePiece model, copied into
``OUT_DIR``: the directory is then complete for ``transcribe`` once the inference layer reads the
SeamlessM4T features) or from ``--vocab-size N`` (no tokenizer is written; the directory is an
``init_from`` source for ``just-asr fit``, which starts the decoder fresh anyway).

``--config PRESET`` takes the parts the checkpoint does not define (quantiser, contrastive head,
masking, decoder, loss weights) from a model preset; the front end and encoder always come from
``config.json``. ``--verify`` runs a random batch through the import and through ``transformers``
(when installed) and prints the largest difference of the encoder outputs.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", metavar="HF_DIR", help="directory with config.json + safetensors of a Wav2Vec2BertModel")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="just-asr model directory to write")
    dec = parser.add_mutually_exclusive_group(required=True)
    dec.add_argument("--tokenizer", help="just-asr SentencePiece .model (gives the RNN-T vocabulary; copied into OUT_DIR)")
    dec.add_argument("--vocab-size", type=int, help="RNN-T output units incl. blank, when no tokenizer is at hand")
    parser.add_argument("--contrastive-layers", type=int, default=None,
                        help="HF layers that form the contrastive stack; the rest form the MLM stack (default 8: 8 + 16)")
    parser.add_argument("--config", default=None,
                        help="model preset (YAML, 'model: arch:') for the parts the checkpoint lacks: quantizer, "
                             "contrastive head, masking, decoder, loss; its frontend/encoder are ignored")
    parser.add_argument("--mask-replace", choices=["auto", "learned", "noise"], default="auto",
                        help="masked frames: the checkpoint's masked_spec_embed (learned), random vectors (noise), "
                             "or learned when the checkpoint has it (auto, default)")
    parser.add_argument("--encoder-dropout", type=float, default=None,
                        help="encoder.dropout (default: the largest of HF's hidden/activation/conv dropouts)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation")
    parser.add_argument("--verify", action="store_true",
                        help="compare encoder outputs with transformers on a random padded batch (needs transformers)")
    parser.add_argument("--quiet", action="store_true", help="print counts instead of the full tensor lists")


def run(args: argparse.Namespace) -> int:
    from just_asr.hf_import import MAX_VOCAB_SIZE, HfImportError, check_output_dir, import_w2v_bert, write_model_dir

    try:
        check_output_dir(args.hf_dir, args.out_dir)
    except HfImportError as exc:
        raise SystemExit(f"import-w2v-bert: {exc}") from None
    if args.vocab_size is not None and not 2 <= args.vocab_size <= MAX_VOCAB_SIZE:
        raise SystemExit(f"import-w2v-bert: --vocab-size must be between 2 and {MAX_VOCAB_SIZE:,}, got {args.vocab_size:,}")
    base = None
    if args.config:
        from just_asr.model import load_model_config

        try:
            base = load_model_config(args.config)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"import-w2v-bert: {exc}") from None
    try:
        result = import_w2v_bert(
            args.hf_dir, vocab_size=args.vocab_size, tokenizer=args.tokenizer,
            contrastive_layers=args.contrastive_layers, base=base, mask_replace=args.mask_replace,
            encoder_dropout=args.encoder_dropout, seed=args.seed,
        )
    except (HfImportError, ValueError) as exc:
        raise SystemExit(f"import-w2v-bert: {exc}") from None
    print(result.summary(max_names=0 if args.quiet else None))
    try:
        out = write_model_dir(result, args.out_dir)
    except HfImportError as exc:
        raise SystemExit(f"import-w2v-bert: {exc}") from None
    print(f"wrote {out} (model.safetensors, config.yaml, model_arch.yaml, import_report.json"
          f"{', tokenizer.model' if result.tokenizer is not None else ''})")
    if args.verify:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("--verify needs transformers (pip install 'just-asr[hf]'); skipped", file=sys.stderr)
            return 0
        import torch

        from just_asr.hf_import import max_encoder_difference

        g = torch.Generator().manual_seed(0)
        lens = torch.tensor([200, 151, 96])
        feats = torch.randn(3, 200, 80, generator=g)
        feats = feats * (torch.arange(200)[None, :, None] < lens[:, None, None])
        diff = max_encoder_difference(result, args.hf_dir, feats, lens)
        print(f"verify: max |just-asr - transformers| over valid frames of a padded batch = {diff:.3g}")
        if diff > 1e-3:
            print("verify: the encoders differ", file=sys.stderr)
            return 1
    return 0
