"""`raft rerank train`: a cross-encoder reranker fine-tuned on a RAFT dataset's questions, oracle chunks
(positives) and mined distractors (hard negatives). The rerank stage that uses it is retrieval/rerank.py."""
