"""serve configs load; config errors name keys; engine command lines built from config, exactly."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from raft.config import ConfigError, load_config
from serving.config import AuthConfig, ServeConfig
from serving.launchers import (
    EngineProcess,
    engine_command,
    engine_url,
    port_in_use,
    transformers_command,
    vllm_command,
)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("serve_*.yaml")), ids=lambda p: p.name)
def test_every_serve_config_loads(path):
    cfg = load_config(ServeConfig, path, section="serve")
    assert cfg.model_name


def test_config_errors_are_reported_together(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("serve:\n  engine: {kind: openai}\n  port: 0\n  retrieval: {top_k: 500}\n")
    with pytest.raises(ConfigError) as e:
        load_config(ServeConfig, f, section="serve")
    text = str(e.value)
    assert "port" in text and "top_k" in text
    f.write_text("serve:\n  engine: {kind: openai}\n")
    with pytest.raises(ConfigError) as e:
        load_config(ServeConfig, f, section="serve")
    assert "engine.url is required" in str(e.value) and "retrieval.index_dir is required" in str(e.value)


def test_api_keys_from_env(monkeypatch):
    monkeypatch.setenv("RAFT_SERVE_API_KEYS", "k1:acme, k2:globex,")  # a trailing comma means nothing
    cfg = ServeConfig.model_validate({"engine": {"kind": "openai", "url": "http://x"}, "retrieval": {"backend": "none"},
                                      "auth": {"keys": {"k0": "initech", " k3 ": " initech "}}})
    assert cfg.auth.resolved_keys() == {"k0": "initech", "k3": "initech", "k1": "acme", "k2": "globex"}


OPEN = {"engine": {"kind": "openai", "url": "http://x"}, "retrieval": {"backend": "none"}}


@pytest.mark.parametrize("env,shown", [("s3cretvalue", "'s3'... (11 characters)"),
                                       ("k1:acme,s3cretvalue", "entry 2 ('s3'... (11 characters))"),
                                       (":acme", "(':acme') has an empty key"),
                                       ("s3cretvalue:", "('s3'... (11 characters)) has an empty tenant"),
                                       ("abc", "(a key of 3 characters)"),
                                       ("s3cretvalue:acme,s3cretvalue:globex",
                                        "entry 2 ('s3'... (11 characters)) gives tenant 'globex' a key that tenant "
                                        "'acme' already has")])
def test_malformed_api_keys_env_is_an_error_never_skipped(monkeypatch, env, shown):
    """Skipping a malformed entry left the gateway open (`s3cret` alone: auth off) or refused a key."""
    monkeypatch.setenv("RAFT_SERVE_API_KEYS", env)
    with pytest.raises(ValueError) as e:
        ServeConfig.model_validate(OPEN)
    text = str(e.value)
    assert "RAFT_SERVE_API_KEYS" in text and shown in text and "key:tenant[,key:tenant...]" in text
    assert "s3cretvalue" not in text and "'abc'" not in text  # the secret is never printed whole
    with pytest.raises(ValueError, match="RAFT_SERVE_API_KEYS"):  # nor skipped by a gateway built without the check
        AuthConfig().resolved_keys()


@pytest.mark.parametrize("keys,shown", [({"": "acme"}, "a key is empty (tenant 'acme')"),
                                        ({"s3cretvalue": " "}, "'s3'... (11 characters) has no tenant"),
                                        ({"s3cretvalue": None}, "'s3'... (11 characters) has no tenant (got None)"),
                                        ({123456789: "acme"}, "a key is a YAML int, not a string")])
def test_malformed_config_file_keys_are_errors_with_the_key_masked(tmp_path, keys, shown):
    import yaml

    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"serve": {**OPEN, "auth": {"keys": keys}}}))
    with pytest.raises(ConfigError) as e:
        load_config(ServeConfig, f, section="serve")
    text = str(e.value)
    assert "auth.keys" in text and shown in text
    assert "s3cretvalue" not in text and "123456789" not in text


@pytest.mark.parametrize("url,problem", [("localhost:9", "must start with http:// or https://, got 'localhost:9' "
                                                         "(e.g. http://localhost:9)"),
                                         ("ftp://h/v1", "must start with http:// or https://, got 'ftp://h/v1'"),
                                         ("http://", "has no host, got 'http://'"),
                                         ("http://[::1/v1", "is not a valid URL")])
def test_engine_url_without_http_scheme_is_an_error(url, problem):
    """httpx fails on every request to such a URL (500, UnsupportedProtocol) after the gateway said ready."""
    with pytest.raises(ValueError, match="engine.url " + re.escape(problem)):
        ServeConfig.model_validate({**OPEN, "engine": {"kind": "openai", "url": url}})
    ok = ServeConfig.model_validate({**OPEN, "engine": {"kind": "openai", "url": "HTTPS://h:8000/v1"}})
    assert engine_url(ok) == "HTTPS://h:8000/v1"


def test_raft_serve_cli_reports_bad_url_and_keys_together_with_exit_2():
    env = {**os.environ, "RAFT_SERVE_API_KEYS": "s3cretvalue"}
    r = subprocess.run([sys.executable, "-m", "raft.cli", "serve", "engine.kind=openai", "engine.url=localhost:9",
                        "runner=uvicorn", "retrieval.backend=none", "--print-engine-command"],
                       capture_output=True, text=True, timeout=60, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, out
    assert "engine.url must start with http:// or https://, got 'localhost:9'" in out
    assert "RAFT_SERVE_API_KEYS entry 1" in out and "s3cretvalue" not in out


def test_vllm_command_line_exact():
    cfg = ServeConfig.model_validate({
        "engine": {"kind": "vllm", "model": "meta-llama/Llama-3.1-8B-Instruct", "port": 8011, "host": "127.0.0.1",
                   "adapters": {"raft": "/runs/a1", "raft-legal": "/runs/a2"}, "max_lora_rank": 32, "max_loras": 3,
                   "max_model_len": 8192, "extra_args": ["--gpu-memory-utilization", "0.85"]},
        "retrieval": {"backend": "none"}})
    cmd = vllm_command(cfg)
    assert Path(cmd[0]).name == "vllm"
    assert cmd[1:] == ["serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1", "--port", "8011",
                       "--enable-lora", "--lora-modules", "raft=/runs/a1", "raft-legal=/runs/a2",
                       "--max-lora-rank", "32", "--max-loras", "3", "--max-model-len", "8192",
                       "--gpu-memory-utilization", "0.85"]
    assert engine_command(cfg) == cmd and engine_url(cfg) == "http://127.0.0.1:8011"
    from serving.models import served_models

    models = served_models(cfg)
    assert {n: (m.engine_model, m.retrieval) for n, m in models.items()} == {
        "base": ("meta-llama/Llama-3.1-8B-Instruct", False), "raft": ("raft", True), "raft-legal": ("raft-legal", True)}


def test_vllm_without_adapters_and_transformers_command():
    cfg = ServeConfig.model_validate({"engine": {"kind": "vllm", "model": "m"}, "retrieval": {"backend": "none"}})
    assert vllm_command(cfg)[1:] == ["serve", "m", "--host", "127.0.0.1", "--port", "8001"]
    cfg = ServeConfig.model_validate({"engine": {"kind": "transformers", "model": "/m/merged", "port": 8002},
                                      "retrieval": {"backend": "none"}})
    cmd = transformers_command(cfg)
    assert Path(cmd[0]).name == "transformers"
    assert cmd[1:] == ["serve", "/m/merged", "--host", "127.0.0.1", "--port", "8002", "--device", "cpu"]
    cfg = ServeConfig.model_validate({"engine": {"kind": "openai", "url": "http://h:1/v1"},
                                      "retrieval": {"backend": "none"}})
    assert engine_command(cfg) is None and engine_url(cfg) == "http://h:1/v1"


def test_batched_engine_command():
    cfg = ServeConfig.model_validate({"engine": {"kind": "batched", "model": "/m/merged", "port": 8003,
                                                 "max_batch_size": 16, "extra_args": ["--threads", "2"]},
                                      "retrieval": {"backend": "none"}})
    assert engine_command(cfg) == [sys.executable, "-m", "serving.batched", "/m/merged", "--host", "127.0.0.1",
                                   "--port", "8003", "--device", "cpu", "--max-batch", "16", "--exit-with-parent",
                                   "--threads", "2"]
    with pytest.raises(ValueError, match="engine.model is required when engine.kind is 'batched'"):
        ServeConfig.model_validate({"engine": {"kind": "batched"}, "retrieval": {"backend": "none"}})


def test_raft_serve_cli_prints_engine_command(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("serve:\n  engine: {kind: vllm, model: m, adapters: {raft: /a}}\n  retrieval: {backend: none}\n")
    out = subprocess.run([sys.executable, "-m", "raft.cli", "serve", "--config", str(f), "--print-engine-command",
                          "engine.port=9001"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("serve m --host 127.0.0.1 --port 9001 --enable-lora --lora-modules raft=/a "
                                       "--max-lora-rank 16 --max-loras 4")
    bad = subprocess.run([sys.executable, "-m", "raft.cli", "serve", "--config", str(f), "engine.kind=tgi"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "engine.kind" in bad.stderr


def test_engine_that_exits_at_start_is_a_clear_error(tmp_path):
    from raft.errors import RaftError

    proc = EngineProcess([sys.executable, "-c", "import sys; print('boom: no model'); sys.exit(3)"],
                         "http://127.0.0.1:1", str(tmp_path / "e.log")).start()
    with pytest.raises(RaftError, match="exited with code 3(.|\n)*boom: no model"):
        proc.wait_healthy(20)


@pytest.mark.gpu
@pytest.mark.slow
def test_real_vllm_serves_the_tiny_model(tiny_model_dir, tmp_path):
    if shutil.which("vllm") is None and not (VENV_BIN / "vllm").exists():
        pytest.skip("vllm is not installed")
    from gateway_helpers import free_port

    cfg = ServeConfig.model_validate({"engine": {"kind": "vllm", "model": str(tiny_model_dir), "port": free_port(),
                                                 "max_model_len": 1024, "startup_timeout_s": 600},
                                      "retrieval": {"backend": "none"}})
    with EngineProcess(engine_command(cfg), engine_url(cfg), str(tmp_path / "vllm.log")).start() as proc:
        proc.wait_healthy(600)
        r = httpx.post(engine_url(cfg) + "/v1/completions", json={"model": str(tiny_model_dir), "prompt": "Veloria",
                                                                  "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None


def test_prompt_version_mismatch_is_warned(tmp_path, caplog):
    import json
    import logging

    from raft.prompt import PROMPT_VERSION
    from serving.gateway import check_prompt_versions

    old, ok = tmp_path / "old", tmp_path / "ok"
    for d, v in ((old, "raft-prompt-v0"), (ok, PROMPT_VERSION)):
        d.mkdir()
        (d / "raft_meta.json").write_text(json.dumps({"prompt_version": v}))
    cfg = ServeConfig.model_validate({"engine": {"kind": "vllm", "model": "m", "adapters": {"a": str(old), "b": str(ok)}},
                                      "retrieval": {"backend": "none"}})
    with caplog.at_level(logging.WARNING, logger="raft.serve"):
        warnings = check_prompt_versions(cfg)
    assert len(warnings) == 1 and "raft-prompt-v0" in warnings[0] and "raft-prompt-v0" in caplog.text


def test_replicas_get_the_drivers_keys_and_local_index_needs_one_replica(monkeypatch):
    """Replicas on other nodes lack the driver's environment: keys must travel in the replica config."""
    from serving.config import ServeConfig
    from serving.ray_app import replica_config

    monkeypatch.setenv("RAFT_SERVE_API_KEYS", "k1:acme")
    monkeypatch.setenv("RAFT_ENGINE_API_KEY", "engine-secret")
    cfg = ServeConfig.model_validate({"engine": {"kind": "openai", "url": "http://e:1/v1"},
                                      "retrieval": {"backend": "ray", "index_dir": "idx"},
                                      "ray": {"num_replicas": 2}})
    data = replica_config(cfg)
    monkeypatch.delenv("RAFT_SERVE_API_KEYS")
    monkeypatch.delenv("RAFT_ENGINE_API_KEY")
    rebuilt = ServeConfig.model_validate(data)  # what a replica on another node sees
    assert rebuilt.auth.resolved_keys() == {"k1": "acme"}
    assert rebuilt.engine.api_key == "engine-secret"

    with pytest.raises(ValueError, match="each replica"):
        ServeConfig.model_validate({"engine": {"kind": "openai", "url": "http://e:1/v1"},
                                    "retrieval": {"backend": "local", "index_dir": "idx"},
                                    "ray": {"num_replicas": 2}})


def test_port_in_use_tells_a_busy_port_from_an_address_this_host_lacks():
    from raft.errors import RaftError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert port_in_use("127.0.0.1", s.getsockname()[1]) is True
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is no host's address: binding fails with EADDRNOTAVAIL, not EADDRINUSE
    with pytest.raises(RaftError, match="host \\(engine.host for the engine\\) '192.0.2.1' is not an address"):
        port_in_use("192.0.2.1", 18804)
    with pytest.raises(RaftError) as e:
        port_in_use("192.0.2.1", 18804, key="engine.host")
    text = str(e.value)
    assert text.startswith("engine.host '192.0.2.1' is not an address available on this host")
    assert "192.0.2.1:18804" in text and "127.0.0.1" in text and "0.0.0.0" in text and "in use" not in text
