"""The shipped quickstart: a small corpus about a fictional country, questions with gold documents, and
the pipeline that `raft quickstart` runs on them (see pipeline.py)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
QUESTIONS = HERE / "questions.jsonl"
