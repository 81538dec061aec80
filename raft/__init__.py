"""RAFT: retrieval-augmented fine-tuning, from corpus to dataset to adapter to a served endpoint."""

__version__ = "0.1.0"
