# Serving image: vLLM's OpenAI server plus this project's gateway (`raft serve`) and retrieval.
# Build from the repository root:  docker build -f docker/serving.Dockerfile -t raft-serving .
# The same image runs the engine (entrypoint `vllm serve ...`, see docker/compose.yaml) and the gateway.
FROM vllm/vllm-openai:v0.11.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/workspace/hf \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app
# Dependencies first (cached layer), then the sources. torch comes from the vLLM base image:
# installing without build isolation keeps its CUDA build instead of pulling another one. faiss-cpu (a core
# dependency) and faiss-gpu-cu12 (.[gpu]) install the same `faiss` module: faiss-cpu goes and faiss-gpu is
# reinstalled, so the module is the GPU build's alone.
COPY pyproject.toml README.md ./
COPY raft ./raft
COPY retrieval ./retrieval
COPY serving ./serving
COPY configs ./configs
RUN pip install --no-build-isolation ".[gpu]" \
    && pip uninstall -y faiss-cpu \
    && pip install --no-deps --force-reinstall "faiss-gpu-cu12>=1.8" \
    && python -c "import faiss; faiss.StandardGpuResources" \
    && raft --help > /dev/null

# Gateway port (the engine listens on 8000 inside its own container).
EXPOSE 8000
VOLUME ["/workspace"]
WORKDIR /workspace
# vLLM's image sets ENTRYPOINT to its API server; ours is the `raft` CLI, `vllm serve` is set per service.
ENTRYPOINT ["raft"]
# Default: the gateway in front of an engine reachable as http://engine:8000/v1 (compose service `engine`),
# with the index in /workspace/out/index. Override any key: `docker run raft-serving serve --config ...`.
CMD ["serve", "engine.kind=openai", "engine.url=http://engine:8000/v1", "engine.model=raft", \
     "retrieval.backend=local", "retrieval.index_dir=/workspace/out/index", "host=0.0.0.0", "port=8000", \
     "runner=uvicorn"]
