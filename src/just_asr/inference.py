"""The model directory (save/load without pickle) and the :class:`Transcriber`.

A model directory holds everything needed to run a trained model, and nothing executable::

    MODEL_DIR/
      model.safetensors   weights (safetensors: a JSON header + raw tensor bytes, never unpickled)
      config.yaml         format_version, model config, vocab_size, blank_id, feature settings
                          (the recipe the model was trained with), whether CMVN is used,
                          optional ``extra`` (e.g. training step, data)
      tokenizer.model     the SentencePiece model (copied; its JSON sidecar too when present)
      cmvn.json           optional global CMVN statistics (see just_asr.data.features.GlobalCMVN)

:func:`load_model_dir` reads ``config.yaml`` with ``yaml.safe_load``, builds ``JustModel`` from the
config, and loads the weights with ``safetensors.torch.load_file``; no ``torch.load`` (pickle) is
ever called. A directory whose weights file is a pickle or a ``torch.save`` archive is refused with
a message saying so.

Feature recipes. ``features.type`` in ``config.yaml`` names one of two recipes, and every other
setting under ``features`` must equal what this just-asr extracts for it (else loading is refused,
naming the setting):

* ``fbank``: lhotse's Kaldi fbank (:func:`feature_settings`), optional global CMVN; the recipe of
  every model trained from scratch;
* ``seamless_fbank``: the SeamlessM4T / w2v-BERT 2.0 recipe
  (:func:`just_asr.data.seamless_features.seamless_feature_settings`), never with CMVN; written by
  ``just-asr import-w2v-bert`` and by ``save_model_dir(..., features="seamless")`` for a model
  fine-tuned from such an import.

:class:`Transcriber` extracts the recipe the directory names (``LoadedModel.extract_features``);
code that builds batches itself (``just-asr decode``) passes ``LoadedModel.feature_source`` to the
data loader.

Example::

    from just_asr.inference import Transcriber, load_model_dir
    loaded = load_model_dir("exp/tiny/model")
    texts = Transcriber(loaded, method="beam", beam=4).transcribe_files(["a.flac", "b.opus"])
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from just_asr.data import seamless_features
from just_asr.data.audio import SAMPLE_RATE, AudioError, load_audio
from just_asr.data.features import (
    FBANK_DIM,
    FRAME_LENGTH,
    FRAME_SHIFT,
    SEAMLESS_SOURCE,
    GlobalCMVN,
    check_feature_source,
    extract_fbank,
)
from just_asr.data.tokenizer import Tokenizer
from just_asr.decode import DEFAULT_MAX_SYMBOLS_PER_FRAME, SearchResult, decode
from just_asr.model import JustModel, ModelConfig

#: version of the directory layout written by :func:`save_model_dir`
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
TOKENIZER_NAME = "tokenizer.model"
TOKENIZER_SIDECAR_NAME = "tokenizer.json"
CMVN_NAME = "cmvn.json"
#: file names of pickled checkpoints that a model directory must not rely on
_PICKLE_NAMES = ("model.pt", "model.pth", "model.bin", "pytorch_model.bin", "model.ckpt", "last.ckpt")


class ModelDirError(ValueError):
    """A model directory (or one of its files) that cannot be used; the message names the file."""


#: ``features.type`` of the lhotse fbank recipe
FBANK_FEATURE_TYPE = "fbank"


def feature_settings() -> dict[str, Any]:
    """The lhotse fbank recipe (``features.type: fbank``), as recorded in ``config.yaml``."""
    return {
        "type": FBANK_FEATURE_TYPE,
        "num_mel_bins": FBANK_DIM,
        "frame_length": FRAME_LENGTH,
        "frame_shift": FRAME_SHIFT,
        "sampling_rate": SAMPLE_RATE,
        "dither": 0.0,
        "snip_edges": False,
    }


def feature_recipes() -> dict[str, dict[str, Any]]:
    """Every recipe a model directory may name: ``features.type`` -> its settings."""
    return {
        FBANK_FEATURE_TYPE: feature_settings(),
        seamless_features.FEATURE_TYPE: seamless_features.seamless_feature_settings(),
    }


def feature_settings_for_source(feature_source: str | None) -> dict[str, Any]:
    """The recipe a data ``feature_source`` trains with: the SeamlessM4T settings for
    ``"seamless"``, the lhotse fbank settings for ``auto``/``precomputed``/``on-the-fly``/``None``."""
    if feature_source is None:
        return feature_settings()
    if check_feature_source(feature_source) == SEAMLESS_SOURCE:
        return seamless_features.seamless_feature_settings()
    return feature_settings()


def _resolve_features(features: dict[str, Any] | str | None) -> dict[str, Any]:
    """``save_model_dir``'s ``features`` argument -> a known recipe (a copy), or ``ModelDirError``."""
    if features is None or isinstance(features, str):
        try:
            return feature_settings_for_source(features)
        except ValueError as exc:
            raise ModelDirError(f"features: {exc}") from None
    if not isinstance(features, dict):
        raise TypeError(f"features must be a dict, a feature source name or None, got {type(features).__name__}")
    given = {k: v for k, v in features.items() if k != "cmvn"}  # a loaded config's features carry 'cmvn'
    recipes = feature_recipes()
    ftype = given.get("type")
    if ftype not in recipes:
        raise ModelDirError(f"features: type {ftype!r} is not a recipe this just-asr extracts ({', '.join(recipes)})")
    for key, value in recipes[ftype].items():
        if given.get(key) != value:
            raise ModelDirError(f"features: {key} is {given.get(key)!r} but the {ftype} recipe has {value!r}")
    unknown = sorted(set(given) - set(recipes[ftype]))
    if unknown:
        raise ModelDirError(f"features: unknown settings {unknown} for the {ftype} recipe")
    return dict(recipes[ftype])


def _config_dict(model_config: ModelConfig | dict) -> dict:
    if isinstance(model_config, ModelConfig):
        return model_config.to_dict()
    if not isinstance(model_config, dict):
        raise TypeError(f"model_config must be a ModelConfig or a dict, got {type(model_config).__name__}")
    return ModelConfig.from_dict(model_config, source="model_config").to_dict()  # validates


def save_model_dir(
    out_dir: str | Path,
    model: JustModel,
    model_config: ModelConfig | dict,
    tokenizer_path: str | Path,
    cmvn: GlobalCMVN | str | Path | None = None,
    extra: dict | None = None,
    features: dict[str, Any] | str | None = None,
) -> Path:
    """Write a model directory (see the module docstring) and return its path.

    Args:
        out_dir: directory to create (existing files of the same names are overwritten).
        model: the model whose weights are saved (its ``vocab_size`` is recorded).
        model_config: the model's :class:`ModelConfig` or its ``to_dict()`` form.
        tokenizer_path: the tokenizer ``.model`` file (or a directory holding ``tokenizer.model``).
        cmvn: global CMVN statistics (object or ``cmvn.json`` path), or ``None``.
        extra: any YAML-serialisable information to keep under ``extra`` in ``config.yaml``.
        features: the feature recipe the model was trained with, recorded under ``features``:
            ``None`` (default) for lhotse fbank; a data ``feature_source`` name (``"seamless"``
            for the SeamlessM4T recipe of a fine-tuned w2v-BERT 2.0 import; ``"auto"``,
            ``"precomputed"``, ``"on-the-fly"`` for lhotse fbank); or a recipe dict equal to
            :func:`feature_settings` or ``seamless_feature_settings()`` (a ``cmvn`` key in it is
            ignored: ``cmvn`` decides). CMVN together with the SeamlessM4T recipe is refused.
    """
    from safetensors.torch import save_model

    out = Path(out_dir)
    cfg = _config_dict(model_config)
    vocab_size = int(getattr(model, "vocab_size", 0))
    tok_src = Path(tokenizer_path)
    if tok_src.is_dir():
        tok_src = tok_src / TOKENIZER_NAME
    tokenizer = Tokenizer(tok_src)  # refuses a missing or invalid tokenizer before anything is written
    if vocab_size and tokenizer.vocab_size != vocab_size:
        raise ModelDirError(f"{tok_src}: tokenizer has {tokenizer.vocab_size} units but the model has {vocab_size}")
    recipe = _resolve_features(features)
    cmvn_obj = GlobalCMVN.load(cmvn) if isinstance(cmvn, (str, Path)) else cmvn
    if cmvn_obj is not None and recipe["type"] != FBANK_FEATURE_TYPE:
        raise ModelDirError(f"{out}: global CMVN cannot be saved with the {recipe['type']} features, which are "
                            "normalised per utterance")
    if cmvn_obj is not None and cmvn_obj.dim != FBANK_DIM:
        raise ModelDirError(f"CMVN statistics have {cmvn_obj.dim} dimensions, the features have {FBANK_DIM}")

    model_cfg = getattr(model, "cfg", None)
    if isinstance(model_cfg, ModelConfig) and model_cfg.to_dict() != cfg:
        raise ModelDirError(f"{out}: model_config differs from the configuration the model was built with")

    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / WEIGHTS_NAME), metadata={"format": "pt", "just_asr_format_version": str(FORMAT_VERSION)})
    if tok_src.resolve() != (out / TOKENIZER_NAME).resolve():
        shutil.copyfile(tok_src, out / TOKENIZER_NAME)
        sidecar = tok_src.with_name(TOKENIZER_SIDECAR_NAME)
        if sidecar.is_file():
            shutil.copyfile(sidecar, out / TOKENIZER_SIDECAR_NAME)
        elif (out / TOKENIZER_SIDECAR_NAME).exists():
            (out / TOKENIZER_SIDECAR_NAME).unlink()  # an earlier tokenizer's description would mislead
    if cmvn_obj is not None:
        cmvn_obj.save(out / CMVN_NAME)
    elif (out / CMVN_NAME).exists():
        (out / CMVN_NAME).unlink()  # a stale file from an earlier export would silently change features
    config = {
        "format_version": FORMAT_VERSION,
        "vocab_size": vocab_size or tokenizer.vocab_size,
        "blank_id": tokenizer.blank_id,
        "features": {**recipe, "cmvn": cmvn_obj is not None},
        "model": cfg,
        "extra": extra or {},
    }
    try:
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError as exc:
        raise ModelDirError(f"{out / CONFIG_NAME}: 'extra' is not YAML-serialisable ({exc})") from None
    (out / CONFIG_NAME).write_text(text, encoding="utf-8")
    return out


@dataclass
class LoadedModel:
    """What :func:`load_model_dir` returns: the model (eval mode), tokenizer, config and CMVN."""

    model: JustModel
    tokenizer: Tokenizer
    config: dict
    cmvn: GlobalCMVN | None
    path: Path = field(default_factory=Path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def feature_type(self) -> str:
        """``features.type`` of the directory: ``"fbank"`` or ``"seamless_fbank"``."""
        return str(self.config["features"]["type"])

    @property
    def feature_source(self) -> str | None:
        """The data ``feature_source`` this model needs: ``"seamless"`` for the SeamlessM4T
        recipe, ``None`` for lhotse fbank (any of ``auto``/``precomputed``/``on-the-fly``)."""
        return SEAMLESS_SOURCE if self.feature_type == seamless_features.FEATURE_TYPE else None

    def extract_features(self, samples, sampling_rate: int) -> Tensor:
        """Features of one utterance in this model's recipe, before CMVN.

        Args:
            samples: ``(N,)`` or ``(N, C)`` float waveform (channels averaged, resampled to 16 kHz).
            sampling_rate: rate of ``samples``.

        Returns:
            float32 ``(T, 80)``: :func:`just_asr.data.features.extract_fbank` (``T = (N + 80) //
            160``) or :func:`just_asr.data.seamless_features.seamless_fbank` (``T = 1 + (N - 400) //
            160``; ``ValueError`` below 560 samples).
        """
        if self.feature_source == SEAMLESS_SOURCE:
            return seamless_features.seamless_fbank(samples, sampling_rate)
        return extract_fbank(samples, sampling_rate)


def _looks_like_pickle(head: bytes) -> str | None:
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save format)"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "a Python pickle"
    return None


def _read_config(path: Path) -> dict:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelDirError(f"{cfg_path}: model config not found (is {path} a model directory written by just-asr export?)")
    try:
        config = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        from just_asr.model.config import yaml_error_text

        raise ModelDirError(f"{cfg_path}: {yaml_error_text(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ModelDirError(f"{cfg_path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    if not isinstance(config, dict):
        raise ModelDirError(f"{cfg_path}: expected a mapping at the top level")
    for key in ("format_version", "vocab_size", "model", "features"):
        if key not in config:
            raise ModelDirError(f"{cfg_path}: missing key '{key}'")
    version = config["format_version"]
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise ModelDirError(f"{cfg_path}: format_version {version!r} is not supported (this just-asr reads 1..{FORMAT_VERSION})")
    if not isinstance(config["vocab_size"], int) or config["vocab_size"] < 2:
        raise ModelDirError(f"{cfg_path}: vocab_size must be an integer >= 2, got {config['vocab_size']!r}")
    feats = config["features"]
    if not isinstance(feats, dict):
        raise ModelDirError(f"{cfg_path}: 'features' must be a mapping")
    recipes = feature_recipes()
    ftype = feats.get("type")
    if ftype not in recipes:
        raise ModelDirError(
            f"{cfg_path}: features.type is {ftype!r} but this just-asr extracts only "
            f"{' or '.join(repr(t) for t in recipes)}; the model would see different features than it was trained on"
        )
    for key, value in recipes[ftype].items():
        if feats.get(key) != value:
            raise ModelDirError(
                f"{cfg_path}: features.{key} is {feats.get(key)!r} but this just-asr extracts {value!r} "
                f"for features.type {ftype!r}; the model would see different features than it was trained on"
            )
    if ftype != FBANK_FEATURE_TYPE and feats.get("cmvn"):
        raise ModelDirError(f"{cfg_path}: features.cmvn is true, but {ftype} features are normalised per utterance "
                            "and never take global CMVN")
    return config


def _load_weights(weights: Path, device: str | torch.device) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights.is_file():
        found = [p.name for p in weights.parent.iterdir() if p.name in _PICKLE_NAMES or p.suffix in (".pt", ".pth", ".ckpt", ".bin")]
        hint = f"; found {', '.join(sorted(found))}, which is never loaded (pickle); convert it with just-asr export" if found else ""
        raise ModelDirError(f"{weights}: weights file not found{hint}")
    with open(weights, "rb") as fh:
        head = fh.read(8)
    kind = _looks_like_pickle(head)
    if kind is not None:
        raise ModelDirError(
            f"{weights}: is {kind}, not safetensors; refusing to unpickle it (pickle can run arbitrary code). "
            "Write model directories with just-asr export."
        )
    try:
        return load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelDirError(f"{weights}: not a valid safetensors file ({exc})") from None


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory written by :func:`save_model_dir`.

    Builds ``JustModel`` from ``config.yaml`` and loads ``model.safetensors`` strictly (every weight
    must match by name and shape). Never unpickles anything. The model is returned in eval mode on
    ``device``. Raises :class:`ModelDirError` naming the offending file.
    """
    path = Path(path)
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch has no usable CUDA device")
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no data; use cpu or cuda")
    try:
        torch.empty(1, device=dev)
    except Exception as exc:  # the type depends on the backend (RuntimeError, NotImplementedError, AssertionError)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(f"device {device!r} is not available ({type(exc).__name__}: {reason})") from None
    if not path.is_dir():
        if path.is_file() and path.suffix == ".ckpt":
            raise ModelDirError(f"{path}: a training checkpoint, not a model directory: make one with "
                                f"`just-asr export {path} MODEL_DIR`")
        raise ModelDirError(f"{path}: model directory not found")
    config = _read_config(path)
    cfg_path = path / CONFIG_NAME
    try:
        model_cfg = ModelConfig.from_dict(config["model"], source=f"{cfg_path} (model)")
    except (ValueError, TypeError) as exc:
        raise ModelDirError(str(exc)) from None
    vocab_size = int(config["vocab_size"])
    tokenizer = Tokenizer(path / TOKENIZER_NAME)
    if tokenizer.vocab_size != vocab_size:
        raise ModelDirError(f"{path / TOKENIZER_NAME}: tokenizer has {tokenizer.vocab_size} units but {cfg_path} says vocab_size {vocab_size}")
    state = _load_weights(path / WEIGHTS_NAME, device)
    model = JustModel(model_cfg, vocab_size)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelDirError(
            f"{path / WEIGHTS_NAME}: weights do not match {cfg_path}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelDirError(
                f"{path / WEIGHTS_NAME}: '{name}' has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    cmvn = None
    if config["features"].get("cmvn"):
        if not (path / CMVN_NAME).is_file():
            raise ModelDirError(f"{path / CMVN_NAME}: missing, but {cfg_path} says the model uses CMVN")
        cmvn = GlobalCMVN.load(path / CMVN_NAME)
        if cmvn.dim != FBANK_DIM:
            raise ModelDirError(f"{path / CMVN_NAME}: has {cmvn.dim} dimensions, the features have {FBANK_DIM}")
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, cmvn=cmvn, path=path)


@dataclass
class FileResult:
    """Result of transcribing one file: ``text``, or ``error`` (a message naming the file)."""

    path: str
    text: str | None
    error: str | None = None


#: the encoder precisions :class:`Transcriber` offers (``encoder_dtype``)
ENCODER_DTYPES = ("float32", "bfloat16")


def stack_encoded(encoded: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack encoder outputs ``[(enc (B_i, T_i, D), enc_lens (B_i,)), ...]`` into one batch
    ``(enc (sum B_i, max T_i, D), enc_lens (sum B_i,))``, zero-padding each in time."""
    t_max = max(int(e.shape[1]) for e, _ in encoded)
    parts = [e if e.shape[1] == t_max else torch.nn.functional.pad(e, (0, 0, 0, t_max - e.shape[1]))
             for e, _ in encoded]
    return torch.cat(parts, dim=0), torch.cat([lens for _, lens in encoded], dim=0)


class _Activity:
    """Encoder calls and searches in progress in this process, over every :class:`Transcriber`.

    torch's intra-op thread count is set per thread (and new threads take the last value set as
    their default), so a search may only widen its own thread's count while nothing else decodes:
    no encoder call running or waiting for a worker, and no other search.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.encoding = 0
        self.searching = 0

    def add_encoding(self, n: int) -> None:
        with self.lock:
            self.encoding += n


_ACTIVITY = _Activity()


def pool_for_search(
    encoded: Iterable[tuple[Any, Tensor, Tensor]], search_batch: int
) -> Iterator[list[tuple[Any, Tensor, Tensor]]]:
    """Group consecutive encoder outputs ``(tag, enc, enc_lens)`` (as :meth:`Transcriber.encode_stream`
    yields them) until a group holds at least ``search_batch`` rows; ``0`` gives one group per
    output. The last group may be smaller; no group is empty. Search each group with
    :meth:`Transcriber.search_pooled` (``just-asr decode --search-batch``)."""
    pool: list[tuple[Any, Tensor, Tensor]] = []
    rows = 0
    for item in encoded:
        pool.append(item)
        rows += int(item[1].shape[0])
        if rows >= search_batch:
            yield pool
            pool, rows = [], 0
    if pool:
        yield pool


class Transcriber:
    """Turn audio (files or feature batches) into text with a loaded model.

    Files are featurised with the recipe the model directory names (lhotse fbank, or the
    SeamlessM4T recipe for a w2v-BERT 2.0 import: ``loaded.extract_features``).

    Args:
        loaded: from :func:`load_model_dir`.
        method: ``"greedy"`` or ``"beam"``.
        beam: beam size (beam search only).
        max_symbols_per_frame: most units emitted per encoder frame.
        length_norm, merge: beam search options (see :func:`just_asr.decode.beam_search`).
        max_batch_frames: most feature frames (padding included) in one batch of ``transcribe_files``
          (10 ms each in both recipes: the default is 2 minutes of audio).
        encoder_dtype: ``"float32"`` (default) or ``"bfloat16"``: the encoder under
          ``torch.autocast(bfloat16)`` (1.3-1.5x faster on a CPU with AVX-512 bf16, WER within about
          a point on the demo: ``BENCHMARKS.md``); its output is cast back to float32, so the search
          is float32 either way.
        encoder_workers: how many batches :meth:`encode_stream` encodes at once, each in its own
          thread (torch kernels release the GIL). With small models on few cores, two single-threaded
          encoder calls side by side beat one call on two intra-op threads (1.1-1.3x on the demo
          model, ``BENCHMARKS.md``): give torch ``cores // encoder_workers`` threads then
          (``just-asr decode --encoder-workers`` does).
        search_threads: torch intra-op threads for a search that starts while nothing else in
          the process decodes (no encoder call of any ``Transcriber`` running or queued for a
          worker, no other search), e.g. the last pooled search of ``just-asr decode`` when the
          workers are done; the setting is restored afterwards. With encoder workers on one thread
          each, the search would otherwise run on one thread while the other cores idle (the demo
          model's searches are 1.16-1.32x faster on two threads: ``BENCHMARKS.md``). ``None``
          (default) leaves torch's setting alone. A search that starts while an encoder call runs
          keeps the current setting, so the two never oversubscribe the cores. torch keeps the
          thread count per thread, and a thread's first torch call takes the last value set
          anywhere: a thread of your own whose first torch call falls inside such a search keeps
          ``search_threads`` for good. torch builds without OpenMP ignore the change (with a warning).

    Encoder and search can run on different batches: :meth:`encode` a padding-friendly batch at a
    time, then :meth:`search_pooled` several encoder outputs at once. The search steps through the
    frames of the longest row, with per-frame costs that hardly grow with the number of rows, so
    one search over many short encoder batches is several times cheaper than one per batch
    (``just-asr decode --search-batch``).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        method: str = "greedy",
        beam: int = 4,
        max_symbols_per_frame: int = DEFAULT_MAX_SYMBOLS_PER_FRAME,
        length_norm: bool = False,
        merge: str = "max",
        max_batch_frames: int = 12000,
        encoder_dtype: str = "float32",
        encoder_workers: int = 1,
        search_threads: int | None = None,
    ) -> None:
        if method not in ("greedy", "beam"):
            raise ValueError(f"unknown decoding method {method!r}; use 'greedy' or 'beam'")
        if encoder_workers < 1:
            raise ValueError(f"encoder_workers must be >= 1; got {encoder_workers}")
        if encoder_dtype not in ENCODER_DTYPES:
            raise ValueError(f"unknown encoder dtype {encoder_dtype!r}; use one of {', '.join(ENCODER_DTYPES)}")
        if max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame must be >= 1; got {max_symbols_per_frame}")
        if search_threads is not None and search_threads < 1:
            raise ValueError(f"search_threads must be >= 1; got {search_threads}")
        if beam < 1:
            raise ValueError(f"beam must be >= 1; got {beam}")
        if max_batch_frames < 1:
            raise ValueError(f"max_batch_frames must be >= 1; got {max_batch_frames}")
        self.loaded = loaded
        self.method = method
        self.beam = beam
        self.max_symbols_per_frame = max_symbols_per_frame
        self.length_norm = length_norm
        self.merge = merge
        self.max_batch_frames = max_batch_frames
        self.encoder_dtype = encoder_dtype
        self.encoder_workers = encoder_workers
        self.search_threads = search_threads
        #: seconds spent in the encoder and in the search by the calls so far (for RTF reports);
        #: with several encoder workers, "encode" sums the workers' times (it can exceed wall time)
        self.timings = {"encode": 0.0, "search": 0.0}
        self._timings_lock = threading.Lock()

    @property
    def model(self) -> JustModel:
        return self.loaded.model

    @torch.no_grad()
    def encode(self, features: Tensor, lens: Tensor, apply_cmvn: bool = True) -> tuple[Tensor, Tensor]:
        """Encoder output of a batch of features: ``(enc (B, T', D) float32, enc_lens (B,))``.

        Args:
            features: ``(B, T, 80)`` float features in the model's recipe, zero-padded: as
              ``loaded.extract_features`` gives (:func:`just_asr.data.features.extract_fbank`, or
              ``seamless_fbank`` for a ``seamless_fbank`` model; a data loader must then use
              ``feature_source=loaded.feature_source``); CMVN is applied here when the model has
              it and ``apply_cmvn``.
            lens: ``(B,)`` valid frames per row.
            apply_cmvn: ``False`` when ``features`` are already normalised (e.g. by the data loader).
        """
        if features.dim() != 3 or features.shape[-1] != FBANK_DIM:
            raise ValueError(f"features must be (B, T, {FBANK_DIM}); got shape {tuple(features.shape)}")
        if lens.dim() != 1 or lens.shape[0] != features.shape[0]:
            raise ValueError(f"lens must be (B,) with B={features.shape[0]}; got shape {tuple(lens.shape)}")
        model = self.model
        if model.training:
            model.eval()
        device = self.loaded.device
        features = features.to(device, torch.float32)
        lens = lens.to(device, torch.int64)
        if apply_cmvn and self.loaded.cmvn is not None:
            features = self.loaded.cmvn.apply(features, lens)
        _ACTIVITY.add_encoding(1)
        start = time.perf_counter()
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.encoder_dtype == "bfloat16"):
                enc, enc_lens = model.encode(features, lens)
            enc = enc.float()
        finally:
            _ACTIVITY.add_encoding(-1)
            with self._timings_lock:
                self.timings["encode"] += time.perf_counter() - start
        return enc, enc_lens

    def encode_stream(
        self, batches: Iterable[tuple[Tensor, Tensor, Any]], apply_cmvn: bool = True
    ) -> Iterator[tuple[Any, Tensor, Tensor]]:
        """Encode ``(features, lens, tag)`` batches; yields ``(tag, enc, enc_lens)`` in input order.

        With ``encoder_workers > 1`` up to that many batches are encoded at once in worker threads
        (each :meth:`encode` call is independent: the model holds no state between calls), and the
        caller may search the yielded outputs meanwhile (one batch more than the workers is read
        ahead). Only this method uses the workers; :meth:`transcribe_files` encodes one batch at a
        time. ``tag`` is passed through untouched (e.g.
        the batch's cut ids). An exception in a worker is raised here, for its batch.
        """
        if self.encoder_workers == 1:
            for features, lens, tag in batches:
                yield (tag, *self.encode(features, lens, apply_cmvn=apply_cmvn))
            return

        def queued_encode(features: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
            try:
                return self.encode(features, lens, apply_cmvn=apply_cmvn)
            finally:  # before the future's result is set, so a consumer that has it sees the count gone
                _ACTIVITY.add_encoding(-1)

        with ThreadPoolExecutor(self.encoder_workers, thread_name_prefix="just-asr-encode") as pool:
            inflight: deque = deque()
            for features, lens, tag in batches:
                # counted from submission (released by the task; nothing here cancels a task), so
                # that a search never takes a batch waiting for a worker for idleness
                _ACTIVITY.add_encoding(1)
                try:
                    future = pool.submit(queued_encode, features, lens)
                except BaseException:
                    _ACTIVITY.add_encoding(-1)
                    raise
                inflight.append((tag, future))
                if len(inflight) > self.encoder_workers:
                    # hand out the oldest while the newest ones keep every worker busy
                    done_tag, future = inflight.popleft()
                    yield (done_tag, *future.result())
            while inflight:
                done_tag, future = inflight.popleft()
                yield (done_tag, *future.result())

    @torch.no_grad()
    def search(self, enc: Tensor, enc_lens: Tensor) -> SearchResult:
        """The configured search over an encoder output ``enc: (B, T', D)``, ``enc_lens: (B,)``."""
        model = self.model
        if model.training:
            model.eval()
        threads_before = torch.get_num_threads()
        with _ACTIVITY.lock:
            idle = _ACTIVITY.encoding == 0 and _ACTIVITY.searching == 0
            _ACTIVITY.searching += 1
        switch = self.search_threads is not None and idle and self.search_threads != threads_before
        start = time.perf_counter()
        try:
            if switch:
                torch.set_num_threads(self.search_threads)
            result = decode(
                model.predictor, model.joiner, enc, enc_lens, blank_id=self.loaded.tokenizer.blank_id,
                method=self.method, beam=self.beam, max_symbols_per_frame=self.max_symbols_per_frame,
                length_norm=self.length_norm, merge=self.merge,
            )
        finally:
            if switch:
                torch.set_num_threads(threads_before)
            with _ACTIVITY.lock:
                _ACTIVITY.searching -= 1
        self.timings["search"] += time.perf_counter() - start
        return result

    def search_pooled(self, encoded: Sequence[tuple[Tensor, Tensor]]) -> SearchResult:
        """One search over several encoder outputs (each ``(enc (B_i, T_i, D), enc_lens (B_i,))``),
        zero-padded in time to the longest and stacked: results in the order of the rows of
        ``encoded[0]``, then ``encoded[1]``... The same units as searching each part alone (rows
        never interact; padding frames are never read), in fewer, larger search steps."""
        if not encoded:
            raise ValueError("search_pooled needs at least one encoder output")
        enc, enc_lens = stack_encoded(encoded)
        return self.search(enc, enc_lens)

    def decode_batch(self, features: Tensor, lens: Tensor, apply_cmvn: bool = True) -> SearchResult:
        """Decode a batch of features into unit ids: :meth:`encode`, then :meth:`search`
        (arguments as for :meth:`encode`)."""
        return self.search(*self.encode(features, lens, apply_cmvn=apply_cmvn))

    def transcribe_batch(self, features: Tensor, lens: Tensor, apply_cmvn: bool = True) -> list[str]:
        """``features: (B, T, 80)``, ``lens: (B,)`` -> ``B`` texts (see :meth:`decode_batch`)."""
        result = self.decode_batch(features, lens, apply_cmvn=apply_cmvn)
        return [self.loaded.tokenizer.decode(t) for t in result.tokens]

    def file_features(self, path: str | Path) -> Tensor:
        """Features ``(T, 80)`` of one audio file in the model's recipe (before CMVN), as
        :meth:`transcribe_each` computes them. Raises ``AudioError``/``ValueError``/``OSError``."""
        return self.loaded.extract_features(load_audio(path, SAMPLE_RATE), SAMPLE_RATE)

    def transcribe_each(self, paths: Sequence[str | Path]) -> list[FileResult]:
        """Transcribe files one result per path, in order; a file that cannot be read gets an
        ``error`` (naming the file) instead of stopping the others."""
        results: list[FileResult] = [FileResult(str(p), None) for p in paths]
        feats: dict[int, Tensor] = {}
        for i, p in enumerate(paths):
            try:
                f = self.file_features(p)
            except (AudioError, ValueError, OSError) as exc:
                msg = str(exc)
                results[i].error = msg if str(p) in msg else f"{p}: {msg}"
                continue
            need = self.model.frontend.min_input_frames
            if f.shape[0] < need:
                results[i].error = (f"{p}: audio too short: {f.shape[0]} feature frames, the model needs at least "
                                    f"{need} ({need * 10} ms)")
                continue
            feats[i] = f
        order = sorted(feats, key=lambda i: -feats[i].shape[0])
        batch: list[int] = []
        for i in order + [None]:  # type: ignore[list-item]
            if i is not None:
                longest = feats[batch[0]].shape[0] if batch else feats[i].shape[0]
                if not batch or longest * (len(batch) + 1) <= self.max_batch_frames:
                    batch.append(i)
                    continue
            if batch:
                lens = torch.tensor([feats[j].shape[0] for j in batch], dtype=torch.int64)
                padded = torch.zeros(len(batch), int(lens.max()), FBANK_DIM)
                for row, j in enumerate(batch):
                    padded[row, : feats[j].shape[0]] = feats[j]
                for j, text in zip(batch, self.transcribe_batch(padded, lens), strict=True):
                    results[j].text = text
            batch = [i] if i is not None else []
        return results

    def transcribe_files(self, paths: Sequence[str | Path]) -> list[str]:
        """One text per file (wav/flac/opus/mp3..., any rate, resampled to 16 kHz).

        Raises :class:`~just_asr.data.audio.AudioError`-style ``ValueError`` naming the first file
        that cannot be read; use :meth:`transcribe_each` to carry on past bad files.
        """
        results = self.transcribe_each(paths)
        for r in results:
            if r.error is not None:
                raise ValueError(r.error)
        return [r.text or "" for r in results]
