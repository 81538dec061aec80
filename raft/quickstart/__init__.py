"""The shipped quickstart: a small corpus about a fictional country, natural questions with gold answers
and documents (one file to train on, one held out for evaluation), the pipeline config, and the pipeline
that `raft quickstart` runs on them (see pipeline.py)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
TRAIN_QUESTIONS = HERE / "train_questions.jsonl"
QUESTIONS = HERE / "questions.jsonl"  # held out: no training example asks any of them
CONFIG = HERE / "quickstart_cpu.yaml"
