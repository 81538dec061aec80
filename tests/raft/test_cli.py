import subprocess
import sys

from raft.cli import COMMANDS, available, main


def test_top_help_lists_commands_and_example(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "example:" in out
    for name in available():
        assert name in out


def test_unknown_command_is_an_error(capsys):
    try:
        main(["frobnicate"])
    except SystemExit as e:
        assert e.code == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_every_command_help_ends_with_an_example():
    for name in available():
        out = subprocess.run([sys.executable, "-m", "raft.cli", name, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "example:" in out, name
        assert out.rstrip().splitlines()[-1].strip().startswith("raft"), name


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from raft.cli import main; main(['--help']) if False else None; "
            "import raft.cli as c; [c.command_parser(n) for n in c.available()]; "
            "print(','.join(m for m in ('torch', 'ray', 'transformers', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"--help imported {out.strip()}"


def test_raft_package_never_imports_serving():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "raft"
    offenders = [str(p) for p in root.rglob("*.py")
                 if "import serving" in p.read_text() or "from serving" in p.read_text()]
    assert offenders == []
    assert COMMANDS["serve"] == "serving.command"


def test_an_error_message_is_printed_literally(tmp_path, capsys):
    """Square brackets in a message are text (a file name, `raft-stack[vllm]`), not rich markup that eats
    them or fails on them."""
    for name in ("q[draft].jsonl", "q[/bold].jsonl"):
        rc = main(["build", str(tmp_path), "--out", str(tmp_path / "out"), "--questions", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert rc == 2 and name in err and "Traceback" not in err, err
