"""`split.group_by=metadata.KEY`: documents that are pieces of one larger unit (an article) land in one
split; a document without the key is its own group; a malformed or absent key is a clear error."""

import json
from collections import defaultdict

import pytest

from raft.config import ConfigError, load_config
from raft.data.builder import Builder
from raft.data.config import BuildConfig, SplitConfig
from raft.data.splits import assign_splits, doc_groups, metadata_value
from raft.errors import RaftError
from retrieval.types import Chunk

from build_fakes import FakeIndex, make_chunks


def _pieces(n_articles=30, per_article=3):
    """Chunks of n_articles x per_article documents, each document one piece of an article."""
    out = []
    for c in make_chunks(n_articles * per_article, 1):
        d = int(c.doc_id[3:])
        out.append(Chunk(c.chunk_id, c.doc_id, c.text, c.title, c.source, {"article": f"A{d // per_article}"}))
    return out


def _splits_per_article(chunks, doc_split):
    seen = defaultdict(set)
    for c in chunks:
        seen[c.metadata.get("article")].add(doc_split[c.doc_id])
    return seen


def test_pieces_of_an_article_share_a_split_and_a_missing_key_is_its_own_group():
    chunks = _pieces()
    chunks += [Chunk(f"loose{i}", f"loose{i}", "text", "", "", {}) for i in range(6)]  # no article key
    docs = sorted({c.doc_id for c in chunks})
    questions = [[d] for d in docs]
    cfg = SplitConfig(train=0.6, validation=0.2, test=0.2, group_by="metadata.article")
    ungrouped = assign_splits(docs, questions, cfg, seed=0)
    assert any(len(s) > 1 for a, s in _splits_per_article(chunks, ungrouped).items() if a)  # what leaks today
    groups, stats = doc_groups(chunks, cfg.group_by)
    assert dict(stats) == {"documents": 96, "documents_without_key": 6, "groups": 30}
    grouped = assign_splits(docs, questions, cfg, seed=0, groups=groups)
    assert grouped == assign_splits(docs, questions, cfg, seed=0, groups=groups)  # seeded
    per_article = _splits_per_article(chunks, grouped)
    assert all(len(s) == 1 for a, s in per_article.items() if a)
    assert len({next(iter(s)) for a, s in per_article.items() if a}) == 3  # articles still reach every split
    assert len({grouped[f"loose{i}"] for i in range(6)}) > 1  # documents without the key are dealt one by one


def test_metadata_value_reads_flat_dotted_and_nested_keys():
    assert metadata_value({"article": 7}, "metadata.article") == 7
    assert metadata_value({"wiki.page": "P"}, "metadata.wiki.page") == "P"
    assert metadata_value({"wiki": {"page": "Q"}}, "metadata.wiki.page") == "Q"
    assert metadata_value({"wiki": "flat"}, "metadata.wiki.page") is None
    assert metadata_value(None, "metadata.article") is None


def test_group_by_syntax_is_checked_with_every_other_problem():
    with pytest.raises(ConfigError) as e:
        load_config(BuildConfig, None, ["split.group_by=article", "mix.p_oracle=2"], section="build")
    text = str(e.value)
    assert "split.group_by" in text and "'article'" in text and "metadata.KEY" in text and "mix.p_oracle" in text
    for bad in ("metadata", "metadata.", "metadata..x", "metadata.a b", "doc_id"):
        with pytest.raises(ValueError, match="is not a metadata key path"):
            SplitConfig(group_by=bad)
    assert SplitConfig(group_by="metadata.source-article_id").group_by == "metadata.source-article_id"


def test_build_with_group_by_keeps_articles_on_one_side(tmp_path):
    chunks = _pieces(12, 3)
    cfg = {"progress": False, "questions_per_chunk": 1, "mix": {"num_distractors": 2},
           "split": {"train": 0.5, "validation": 0.25, "test": 0.25, "group_by": "metadata.article"}}
    s = Builder(BuildConfig.model_validate(cfg), tmp_path / "o", index=FakeIndex(chunks)).run()
    article = {c.chunk_id: c.metadata["article"] for c in chunks}
    sides = defaultdict(set)
    for split in s["splits"]:
        for line in (tmp_path / "o" / "raft" / f"{split}.jsonl").read_text().splitlines():
            r = json.loads(line)
            sides[article[r["oracle_ids"][0]]].add(split)
    assert len(sides) == 12 and all(len(v) == 1 for v in sides.values()) and len(s["splits"]) == 3
    assert s["split_groups"] == {"group_by": "metadata.article", "documents": 36, "documents_without_key": 0,
                                 "groups": 12}
    built = json.loads((tmp_path / "o" / "build_summary.json").read_text())
    assert built["split_groups"]["groups"] == 12
    cfg["split"]["group_by"] = "metadata.artcle"  # misspelt: no document has it
    with pytest.raises(RaftError, match=r"split.group_by=metadata.artcle: no document .* metadata.article"):
        Builder(BuildConfig.model_validate(cfg), tmp_path / "o2", index=FakeIndex(chunks)).run()
