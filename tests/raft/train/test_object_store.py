"""`train.ray.storage_path` as an object store: a real S3 API (moto's server, in this process) that the Ray
workers reach over HTTP. Checkpoints, metrics JSONL and TensorBoard land in the bucket, a second run with the
same name resumes from the bucket, and a store that cannot be written fails before any worker starts."""

from __future__ import annotations

import json

import pytest

from raft.errors import RaftError
from raft.netutil import free_port

pytestmark = pytest.mark.slow

BUCKET = "raft-runs"


@pytest.fixture(scope="module")
def s3():
    """(base URI with credentials and endpoint, pyarrow filesystem for the assertions)."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key="testkey", secret_key="testsecret",
                           region="us-east-1", allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    yield f"s3://testkey:testsecret@{BUCKET}/runs?endpoint_override={endpoint}&region=us-east-1", fs
    server.stop()


def _read(fs, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _cfg(make_cfg, storage: str, steps: int, out):
    return make_cfg(ray__storage_path=storage, ray__num_workers=1, ray__run_name="s3run",
                    optim__max_steps=steps, save_every=2, log_every=1, output_dir=str(out))


def test_checkpoints_and_metrics_go_to_the_store_and_a_rerun_resumes(s3, ray_local, make_cfg, tmp_path,
                                                                     capsys):
    import pyarrow.fs as pafs

    from raft.train.trainer import run_training

    uri, fs = s3
    summary = run_training(_cfg(make_cfg, uri, 4, tmp_path / "adapter"))
    run = f"{BUCKET}/runs/s3run"
    files = {i.path for i in fs.get_file_info(pafs.FileSelector(run, recursive=True))}
    assert f"{run}/checkpoint_step0000004/adapter/adapter_model.safetensors" in files, sorted(files)
    assert any(p.startswith(f"{run}/logs/tensorboard/events.") for p in files), sorted(files)
    rows = [json.loads(x) for x in _read(fs, f"{run}/logs/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["steps"] == 4
    # credentials in the URI never reach what we print or return
    assert "testsecret" not in json.dumps(summary) and "testsecret" not in capsys.readouterr().out
    assert "testsecret" not in (tmp_path / "adapter" / "raft_meta.json").read_text()
    assert summary["log_dir"].startswith("s3://***@raft-runs/runs/s3run/logs?")

    summary = run_training(_cfg(make_cfg, uri, 6, tmp_path / "adapter2"))
    assert summary["steps"] == 6
    rows = [json.loads(x) for x in _read(fs, f"{run}/logs/metrics.jsonl").splitlines()]
    resumed = [r for r in rows if r.get("event") == "resumed"]
    assert [r["resumed_step"] for r in resumed] == [4], rows  # from the bucket's checkpoint, not from step 0
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4, 5, 6]  # the first run's rows kept


def test_unwritable_store_fails_before_any_worker_starts(s3, make_cfg, tmp_path):
    from raft.train.trainer import check_storage

    uri, _ = s3
    missing = uri.replace(f"@{BUCKET}/", "@no-such-bucket/")
    with pytest.raises(RaftError) as e:
        check_storage(_cfg(make_cfg, missing, 2, tmp_path / "adapter"))
    msg = str(e.value)
    assert "s3://***@no-such-bucket/runs" in msg and "not writable" in msg and "credentials" in msg
    assert "testsecret" not in msg
