"""Decoding speed benchmark: real-time factor of greedy and beam search (search alone and with the
encoder) for a randomly initialised model of a preset size.

Run (from the repository root; results go in BENCHMARKS.md)::

    .venv/bin/python benchmarks/decode.py --config configs/model/tiny.yaml --threads 2
    .venv/bin/python benchmarks/decode.py --config configs/model/tiny.yaml --threads 2 --blank-bias 4

RTF = processing seconds / audio seconds (features are 10 ms frames, so the audio length of a batch
is ``sum(feature_lens) / 100`` seconds). A random model emits far more units than a trained one
(whose joiner mostly says blank); ``--blank-bias`` adds to the blank logit to mimic a trained
model's emission rate, and the script prints the units emitted per second of audio so runs can be
compared. Timings are the best of ``--repeats`` runs, all inside one process.
"""

from __future__ import annotations

import argparse
import time

import torch

from just_asr.decode import beam_search, greedy_search
from just_asr.model import JustModel, load_model_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/model/tiny.yaml")
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16, help="utterances per batch")
    p.add_argument("--seconds", type=float, default=10.0, help="mean utterance length")
    p.add_argument("--beams", default="4", help="comma-separated beam sizes")
    p.add_argument("--max-symbols-per-frame", type=int, default=3)
    p.add_argument("--blank-bias", type=float, default=0.0, help="added to the blank logit")
    p.add_argument("--enc-scale", type=float, default=1.0,
                   help="multiplies the joiner's encoder projection (a random model's logits barely depend on "
                        "the frame; scaling this makes blank/non-blank vary from frame to frame)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_model_config(args.config)
    model = JustModel(cfg, args.vocab_size).to(args.device).eval()
    with torch.no_grad():
        model.joiner.encoder_proj.weight.mul_(args.enc_scale)
        model.joiner.output.bias[0] += args.blank_bias
    frames = torch.randint(int(args.seconds * 75), int(args.seconds * 125) + 1, (args.batch,))
    feats = torch.randn(args.batch, int(frames.max()), 80, device=args.device)
    lens = frames.to(args.device)
    audio = float(frames.sum()) / 100.0

    def best(fn):
        times = []
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
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
    for beam in [int(b) for b in args.beams.split(",")]:
        t_beam, r = best(lambda: beam_search(model.predictor, model.joiner, enc, enc_lens, 0, beam=beam,
                                             max_symbols_per_frame=n))
        units = sum(len(t) for t in r.tokens) / audio
        print(f"beam {beam:<2d} search    RTF {t_beam / audio:.5f}   (+encoder {(t_beam + t_enc) / audio:.5f}); "
              f"{units:.1f} units/s of audio")


if __name__ == "__main__":
    main()
