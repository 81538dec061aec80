"""Retrieval fixtures: one small index built once per session (copies for tests that change it)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def small_config(embedder_path):
    from retrieval.config import IndexConfig

    # small chunks so the eight quickstart documents give several chunks each
    return IndexConfig(embedder=embedder_path, chunk_size=64, chunk_overlap=16)


@pytest.fixture(scope="session")
def tenant_docs(corpus_dir):
    """The quickstart corpus, each document tagged with a tenant (alternating) and an acl list."""
    from retrieval.loaders import load_corpus

    docs, _ = load_corpus(corpus_dir)
    for i, d in enumerate(docs):
        d.metadata = {"tenant": "acme" if i % 2 == 0 else "globex", "acl": ["staff"] + (["admin"] if i < 2 else [])}
    return docs


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, tenant_docs, small_config):
    from retrieval.index import RetrievalIndex

    out = tmp_path_factory.mktemp("idx") / "index"
    RetrievalIndex.build(tenant_docs, out, small_config).close()
    return out


@pytest.fixture
def index_copy(built_index, tmp_path):
    """A private copy of the session index (for tests that add or delete)."""
    dst = tmp_path / "index"
    shutil.copytree(built_index, dst)
    return dst
