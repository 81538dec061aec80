"""`raft serve` fails fast and in one line: the gateway's and the engine's ports, the index and the engine
model are checked before the engine is launched; "ready" is printed only once the port is bound; an
engine that dies at start is summed up by its error line; model paths are resolved as elsewhere."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import yaml

from raft.cli import main
from raft.errors import RaftError
from serving.config import ServeConfig
from serving.launchers import EngineProcess, check_engine_model, resolve_engine_paths

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_engine(monkeypatch):
    """Fail the test if the engine would be started."""
    monkeypatch.setattr("serving.launchers.launch_engine", lambda *a, **k: pytest.fail("the engine was launched"))


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _config(tmp_path, serve: dict) -> str:
    p = tmp_path / "serve.yaml"
    p.write_text(yaml.safe_dump({"serve": serve}))
    return str(p)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_dir(tmp_path) -> str:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    return str(tmp_path / "model")


def test_a_taken_gateway_port_fails_before_the_engine_starts(tmp_path, no_engine, capsys):
    with _listening() as taken:
        port = taken.getsockname()[1]
        cfg = _config(tmp_path, {"engine": {"kind": "transformers", "model": _model_dir(tmp_path)},
                                 "retrieval": {"backend": "none"}, "port": port, "runner": "uvicorn"})
        assert main(["serve", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "gateway ready" not in err


def test_ready_is_printed_only_once_the_port_is_bound(tmp_path, monkeypatch, capsys):
    """A port taken after the check (a race): uvicorn cannot bind, and no banner says otherwise."""
    monkeypatch.setattr("serving.command._preflight", lambda cfg, console: None)
    with _listening() as taken:
        cfg = _config(tmp_path, {"engine": {"kind": "openai", "url": "http://127.0.0.1:9/v1"},
                                 "retrieval": {"backend": "none"}, "port": taken.getsockname()[1],
                                 "runner": "uvicorn"})
        assert main(["serve", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "could not listen on" in err and "gateway ready" not in err


def test_the_index_is_checked_before_the_engine_starts(tmp_path, no_engine, capsys):
    cfg = _config(tmp_path, {"engine": {"kind": "transformers", "model": str(tmp_path), "port": _free_port()},
                             "retrieval": {"backend": "local", "index_dir": str(tmp_path / "missing")},
                             "port": _free_port(), "runner": "uvicorn"})
    assert main(["serve", "--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert "index directory" in err and "does not exist" in err and len(err.splitlines()) == 1


def test_a_damaged_index_is_named_before_the_engine_starts(tmp_path, small_real_index, no_engine, capsys):
    import shutil

    from retrieval.generations import read_manifest

    idx = tmp_path / "idx"
    shutil.copytree(small_real_index, idx)
    store = idx / read_manifest(idx)["segments"][0]["store"]
    data = bytearray(store.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(bytes(data))
    cfg = _config(tmp_path, {"engine": {"kind": "transformers", "model": str(tmp_path), "port": _free_port()},
                             "retrieval": {"backend": "local", "index_dir": str(idx)},
                             "port": _free_port(), "runner": "uvicorn"})
    assert main(["serve", "--config", cfg]) == 2
    assert str(store) in capsys.readouterr().err


def test_a_wrong_reranker_is_named_before_the_engine_starts(tmp_path, small_real_index, embedder_path, no_engine,
                                                             capsys):
    for model, says in ((str(tmp_path / "no-reranker"), "cannot be loaded"), (embedder_path, "is not a cross-encoder")):
        cfg = _config(tmp_path, {"engine": {"kind": "transformers", "model": str(tmp_path), "port": _free_port()},
                                 "retrieval": {"backend": "local", "index_dir": str(small_real_index),
                                               "rerank": {"model": model}},
                                 "port": _free_port(), "runner": "uvicorn"})
        assert main(["serve", "--config", cfg]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and model in err and len(err.splitlines()) == 1, err


def test_a_missing_engine_model_is_one_line(tmp_path, no_engine, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, {"engine": {"kind": "transformers", "model": "runs/quickstart/merged",
                                        "port": _free_port()},
                             "retrieval": {"backend": "none"}, "port": _free_port(), "runner": "uvicorn"})
    assert main(["serve", "--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "engine.model" in err and "does not exist" in err


def test_engine_model_checks(tmp_path, monkeypatch):
    def cfg(**engine):
        return ServeConfig.model_validate({"engine": {"kind": "transformers", **engine},
                                           "retrieval": {"backend": "none"}})

    (tmp_path / "notamodel").mkdir()
    with pytest.raises(RaftError, match="not a transformers model directory"):
        check_engine_model(cfg(model=str(tmp_path / "notamodel")))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    check_engine_model(cfg(model=str(tmp_path / "m")))
    with pytest.raises(RaftError, match="adapters.raft: .* is not an adapter directory"):
        check_engine_model(ServeConfig.model_validate({
            "engine": {"kind": "vllm", "model": str(tmp_path / "m"), "adapters": {"raft": str(tmp_path)}},
            "retrieval": {"backend": "none"}}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RaftError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE=1"):
        check_engine_model(cfg(model="org/not-downloaded"))


def test_an_engine_that_dies_at_start_is_summed_up_by_its_error_line(tmp_path):
    script = ("import sys\nprint('Traceback (most recent call last):')\n"
              "for i in range(30): print(f'  File \"x.py\", line {i}, in f')\n"
              "print('OSError: runs/merged does not appear to have a file named config.json')\n"
              "print('shutting down')\nsys.exit(1)\n")
    (tmp_path / "engine.py").write_text(script)
    log = tmp_path / "engine.log"
    proc = EngineProcess([sys.executable, str(tmp_path / "engine.py")], "http://127.0.0.1:9", str(log)).start()
    with pytest.raises(RaftError) as e:
        proc.wait_healthy(30)
    msg = str(e.value)
    assert "\n" not in msg and "OSError: runs/merged does not appear to have a file named config.json" in msg
    assert str(log) in msg and 'File "x.py"' not in msg


def test_engine_paths_are_resolved_against_the_callers_directory(tmp_path, monkeypatch):
    (tmp_path / "merged").mkdir()
    (tmp_path / "adapter").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = ServeConfig.model_validate({"engine": {"kind": "vllm", "model": "merged",
                                                 "adapters": {"raft": "adapter", "hub": "org/adapter"}},
                                      "retrieval": {"backend": "local", "index_dir": "idx"}})
    resolve_engine_paths(cfg)
    assert cfg.engine.model == str(tmp_path / "merged")
    assert cfg.engine.adapters == {"raft": str(tmp_path / "adapter"), "hub": "org/adapter"}
    assert cfg.retrieval.index_dir == str(tmp_path / "idx")


def test_a_gguf_engine_model_is_converted(tiny_model_dir, tmp_path, monkeypatch):
    """engine.model=FILE.gguf (or a packaged name such as smollm2-135m-instruct) serves the converted
    directory, as raft train and raft export take it."""
    sys.path.insert(0, str(REPO / "tests" / "raft"))
    from gguf_writer import write_llama_gguf

    monkeypatch.setenv("RAFT_CACHE_DIR", str(tmp_path / "cache"))
    gguf = write_llama_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    cfg = ServeConfig.model_validate({"engine": {"kind": "transformers", "model": str(gguf)},
                                      "retrieval": {"backend": "none"}})
    resolve_engine_paths(cfg, log=lambda m: None)
    model = Path(cfg.engine.model)
    assert model.is_dir() and (model / "config.json").is_file() and str(tmp_path / "cache") in str(model)
    check_engine_model(cfg)


def test_print_engine_command_shows_the_resolved_model(tmp_path, monkeypatch, capsys):
    (tmp_path / "merged").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, {"engine": {"kind": "transformers", "model": "merged"},
                             "retrieval": {"backend": "none"}})
    assert main(["serve", "--config", cfg, "--print-engine-command"]) == 0
    assert f"serve {tmp_path / 'merged'} " in capsys.readouterr().out


def test_serve_cpu_config_points_where_the_quickstart_writes():
    serve = yaml.safe_load((REPO / "configs" / "serve_cpu.yaml").read_text())["serve"]
    quick = yaml.safe_load((REPO / "raft" / "quickstart" / "quickstart_cpu.yaml").read_text())["serve"]
    assert serve["retrieval"]["index_dir"] == quick["retrieval"]["index_dir"] == "runs/quickstart/dataset/index"
    assert serve["engine"]["model"] == quick["engine"]["model"]
    openai = yaml.safe_load((REPO / "configs" / "serve_openai.yaml").read_text())["serve"]
    assert openai["retrieval"]["index_dir"] == quick["retrieval"]["index_dir"]
