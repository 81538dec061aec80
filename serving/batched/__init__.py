"""raft's batched engine: an OpenAI-compatible server that generates concurrent requests together, in one
`model.generate` call, for CPUs and small GPUs where `transformers serve` answers one request at a time.
`raft serve` starts it with `engine.kind: batched`; `python -m serving.batched MODEL` starts it alone."""
