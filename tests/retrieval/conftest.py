"""Retrieval fixtures: one small index built once per session (copies for tests that change it)."""

from __future__ import annotations

import shutil

import pytest

# tenants and acls fixed by document name, so that tests can say what a tenant may see (geography, the
# best answer to the tests' question about the largest island, belongs to acme)
GLOBEX = {"veloria_economy.md", "veloria_government.md", "veloria_science.md", "veloria_wildlife.md",
          "veloria_arts.md", "veloria_climate.md", "veloria_farming.md", "veloria_sport.md"}
ADMIN = {"veloria_culture.md", "veloria_economy.md"}


@pytest.fixture(scope="session")
def small_config(embedder_path):
    from retrieval.config import IndexConfig

    # small chunks so each quickstart document gives several chunks
    return IndexConfig(embedder=embedder_path, chunk_size=64, chunk_overlap=16)


@pytest.fixture(scope="session")
def tenant_docs(corpus_dir):
    """The quickstart corpus, each document tagged with a tenant (half each) and an acl list."""
    from retrieval.loaders import load_corpus

    docs, _ = load_corpus(corpus_dir)
    for d in docs:
        d.metadata = {"tenant": "globex" if d.doc_id in GLOBEX else "acme",
                      "acl": ["staff"] + (["admin"] if d.doc_id in ADMIN else [])}
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
