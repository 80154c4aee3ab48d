"""just-asr: JUST (joint unsupervised and supervised training) for multilingual speech recognition."""

__version__ = "0.1.0"
