"""Static checks of docker/ (no Docker engine here): Dockerfiles are linted structurally (base images,
COPY sources that exist and survive .dockerignore, exec-form `raft` entrypoints whose subcommand and
config overrides really validate), and the compose file is checked for services, ports, volumes and
commands that match what the code accepts."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from raft.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
KNOWN = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
         "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def instructions(path: Path) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with comments dropped and `\\` continuations joined."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def dockerignore_allows(dockerfile: Path, rel: str) -> bool:
    """Apply `<Dockerfile>.dockerignore` (last matching rule wins, `!` re-includes)."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not ignore.exists():
        return True
    allowed = True
    for rule in ignore.read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        neg = rule.startswith("!")
        pat = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/"):
            allowed = neg
    return allowed


def _exec_form(args: str, where: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"{where}: use the exec (JSON array) form so signals reach the process: {args}")
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), where
    return value


def check_raft_command(argv: list[str], where: str, config_root: Path = REPO / "configs") -> None:
    """`raft SUBCOMMAND ...` must name a real subcommand, and serve/train/eval configs must validate."""
    from raft.cli import command_parser
    from raft.config import load_config

    assert argv and argv[0] in COMMANDS, f"{where}: {argv[:1]} is not a raft subcommand ({', '.join(COMMANDS)})"
    parser, module = command_parser(argv[0])
    args = parser.parse_args(argv[1:])
    config = getattr(args, "config", None)
    if config:  # image paths /app/configs/X map to the repository's configs/X
        local = config_root / Path(config).name if config.startswith("/app/configs/") else REPO / config
        assert local.is_file(), f"{where}: config {config} does not exist (looked for {local})"
        config = str(local)
    models = {"serve": ("serving.config", "ServeConfig"), "train": ("raft.train.config", "TrainConfig"),
              "eval": ("raft.eval.config", "EvalConfig")}
    if argv[0] in models:
        import importlib

        mod, cls = models[argv[0]]
        model = getattr(importlib.import_module(mod), cls)
        load_config(model, config, args.overrides, section=argv[0])  # raises ConfigError naming bad keys


DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_dockerfiles_present():
    assert {p.name for p in DOCKERFILES} >= {"serving.Dockerfile", "train.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(dockerfile):
    ins = instructions(dockerfile)
    names = [i[1] for i in ins]
    unknown = [f"line {n}: {w}" for n, w, _ in ins if w not in KNOWN]
    assert not unknown, f"{dockerfile.name}: unknown instructions {unknown}"
    first = next(w for w in names if w != "ARG")
    assert first == "FROM", f"{dockerfile.name}: first instruction must be FROM"
    for n, w, args in ins:
        where = f"{dockerfile.name}:{n}"
        if w == "FROM":
            image = args.split()[0]
            assert ":" in image and not image.endswith(":latest"), f"{where}: pin the base image tag ({image})"
        if w in ("COPY", "ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            assert len(parts) >= 2, f"{where}: {w} needs a source and a destination"
            for src in parts[:-1]:
                assert (REPO / src).exists(), f"{where}: {w} source {src!r} does not exist in the build context"
                assert dockerignore_allows(dockerfile, src.rstrip("/")), f"{where}: {src!r} is excluded by .dockerignore"
        if w == "WORKDIR":
            assert args.startswith("/"), f"{where}: WORKDIR should be absolute"
        if w == "RUN" and re.search(r"\bpip install\b", args):
            env = " ".join(a for _, x, a in ins if x == "ENV")
            assert "--no-cache-dir" in args or "PIP_NO_CACHE_DIR=1" in env, f"{where}: pip cache bloats the image"
        if w == "RUN":
            assert "apt-get upgrade" not in args and "sudo " not in args, where
    assert names.count("CMD") <= 1 and names.count("ENTRYPOINT") <= 1
    entry = _exec_form(next(a for _, w, a in ins if w == "ENTRYPOINT"), f"{dockerfile.name} ENTRYPOINT")
    cmd = _exec_form(next(a for _, w, a in ins if w == "CMD"), f"{dockerfile.name} CMD")
    assert entry == ["raft"], f"{dockerfile.name}: the entrypoint is the project's CLI"
    check_raft_command(cmd, f"{dockerfile.name} CMD")


def test_base_images():
    serving = instructions(DOCKER / "serving.Dockerfile")[0][2]
    train = next(a for _, w, a in instructions(DOCKER / "train.Dockerfile") if w == "FROM")
    assert serving.startswith("vllm/vllm-openai:")
    assert train.startswith("rayproject/ray:") and "gpu" in train.split(":")[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _ports(service: dict) -> list[tuple[int, int]]:
    out = []
    for p in service.get("ports", []):
        host, _, container = str(p).rpartition(":")
        out.append((int(host), int(container)))
    return out


def test_compose_services_and_builds(compose):
    services = compose["services"]
    assert set(services) == {"engine", "gateway", "ray-head"}
    for name, svc in services.items():
        ctx = (DOCKER / svc["build"]["context"]).resolve()
        assert ctx == REPO, f"{name}: build context should be the repository root, got {ctx}"
        assert (ctx / svc["build"]["dockerfile"]).is_file(), f"{name}: dockerfile missing"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name}: depends on unknown service {dep}"
    assert "serving" in services["engine"]["build"]["dockerfile"]
    assert "train" in services["ray-head"]["build"]["dockerfile"]
    gpu = services["engine"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]


def test_compose_ports_are_consistent(compose):
    services = compose["services"]
    hosts = [h for svc in services.values() for h, _ in _ports(svc)]
    assert len(hosts) == len(set(hosts)), f"host ports collide: {hosts}"
    assert all(0 < p < 65536 for p in hosts)
    engine_cmd = services["engine"]["command"]
    engine_port = int(next(a.split("=")[1] for a in engine_cmd if a.startswith("--port=")))
    assert (8001, engine_port) in _ports(services["engine"])
    gw = dict(a.split("=", 1) for a in services["gateway"]["command"][1:])
    assert gw["engine.url"] == f"http://engine:{engine_port}/v1", "gateway must reach the engine by service name"
    assert (8000, int(gw["port"])) in _ports(services["gateway"]) and gw["host"] == "0.0.0.0"
    assert {6379, 8265} <= {c for _, c in _ports(services["ray-head"])}


def test_compose_volumes_reference_real_paths(compose):
    named = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src, dst = vol.split(":")[:2]
            assert dst.startswith("/"), f"{name}: container path {dst} must be absolute"
            if src.startswith((".", "/")):
                host = (DOCKER / src).resolve()
                # runtime outputs (out/) are created by the user's runs; the folder that holds them must exist
                assert host.exists() or host.parent == REPO, f"{name}: bind mount {src} -> {host} does not exist"
                assert REPO in host.parents or host == REPO, f"{name}: {src} escapes the repository"
            else:
                assert src in named, f"{name}: named volume {src} is not declared"
    assert (DOCKER / "../configs").resolve().is_dir()


def test_compose_commands_are_valid(compose):
    services = compose["services"]
    gw = services["gateway"]
    assert "entrypoint" not in gw  # the image's entrypoint is `raft`
    check_raft_command(gw["command"], "compose gateway")
    assert services["ray-head"]["entrypoint"] == ["ray"] and services["ray-head"]["command"][:2] == ["start", "--head"]
    engine = services["engine"]
    assert engine["entrypoint"] == ["vllm", "serve"]
    lora = engine["command"][engine["command"].index("--lora-modules") + 1]
    name, path = lora.split("=", 1)
    mounts = [v.split(":")[1] for v in engine["volumes"]]
    assert any(path.startswith(m + "/") for m in mounts), f"adapter {path} is not under a mounted volume"
    gw_cfg = dict(a.split("=", 1) for a in gw["command"][1:])
    assert gw_cfg["engine.model"] == name, "the gateway must ask the engine for the LoRA module's name"
    assert gw["depends_on"]["engine"]["condition"] == "service_healthy" and "healthcheck" in engine


def test_lint_catches_mistakes(tmp_path):
    """The checks above can fail: a bad Dockerfile is rejected."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text('FROM vllm/vllm-openai:latest\nCOPY nothing_here /app\nENTRYPOINT ["raft"]\nCMD ["frobnicate"]\n')
    with pytest.raises(AssertionError, match="pin the base image"):
        test_dockerfile_lint(bad)
    bad.write_text('FROM x:1\nCOPY nothing_here /app\nENTRYPOINT ["raft"]\nCMD ["serve"]\n')
    with pytest.raises(AssertionError, match="does not exist"):
        test_dockerfile_lint(bad)
    with pytest.raises(AssertionError, match="not a raft subcommand"):
        check_raft_command(["frobnicate"], "test")
    from raft.config import ConfigError

    with pytest.raises(ConfigError, match="bogus"):
        check_raft_command(["serve", "engine.kind=openai", "engine.url=http://e/v1", "bogus=1",
                            "retrieval.backend=none"], "test")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_gpu_images_keep_one_faiss_build(dockerfile):
    """faiss-cpu (a core dependency) and faiss-gpu-cu12 (.[gpu]) install the same `faiss` module: an image
    with the GPU extra removes faiss-cpu, reinstalls faiss-gpu over the files it took, and checks the result."""
    for n, w, args in instructions(dockerfile):
        if w == "RUN" and ".[gpu]" in args:
            steps = [s.strip() for s in args.split("&&")]
            at = next(i for i, s in enumerate(steps) if ".[gpu]" in s)
            rest = steps[at + 1:]
            assert "pip uninstall -y faiss-cpu" in rest, f"{dockerfile.name}:{n}"
            reinstall = next(i for i, s in enumerate(rest) if "--force-reinstall" in s and "faiss-gpu" in s)
            assert rest.index("pip uninstall -y faiss-cpu") < reinstall, f"{dockerfile.name}:{n}"
            assert any("faiss.StandardGpuResources" in s for s in rest[reinstall:]), f"{dockerfile.name}:{n}"
