"""raft.netutil: free ports and waiting for a server, against a real local HTTP server and a dead process."""

import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raft.errors import RaftError
from raft.netutil import NotHealthyError, free_port, wait_healthy


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/health" else 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_healthy_server_returns(server):
    wait_healthy(server + "/health", timeout=5)


def test_server_that_starts_late_is_waited_for():
    port = free_port()
    srv_box = {}

    def start_later():
        time.sleep(0.5)
        srv_box["srv"] = srv = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        srv.serve_forever()

    threading.Thread(target=start_later, daemon=True).start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", timeout=10, interval=0.05)
    finally:
        deadline = time.monotonic() + 5
        while "srv" not in srv_box and time.monotonic() < deadline:
            time.sleep(0.01)
        if "srv" in srv_box:
            srv_box["srv"].shutdown()
            srv_box["srv"].server_close()


def test_unhealthy_answer_times_out_naming_url_timeout_and_status(server):
    url = server + "/down"
    t0 = time.monotonic()
    with pytest.raises(NotHealthyError, match=r"/down not healthy after 0\.5 s \(last: HTTP 503\)") as e:
        wait_healthy(url, timeout=0.5, interval=0.05)
    assert time.monotonic() - t0 < 3 and url in str(e.value)
    assert isinstance(e.value, RaftError)  # the CLI prints it as a clean one-line error


def test_nothing_listening_times_out():
    url = f"http://127.0.0.1:{free_port()}/health"
    with pytest.raises(NotHealthyError, match=r"not healthy after 0\.3 s \(last: ConnectError"):
        wait_healthy(url, timeout=0.3, interval=0.05)


def test_dead_process_fails_fast_with_its_exit_code():
    url = f"http://127.0.0.1:{free_port()}/health"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    proc.wait(30)
    t0 = time.monotonic()
    with pytest.raises(NotHealthyError, match=rf"pid {proc.pid}\) exited with code 3 before .*/health"):
        wait_healthy(url, timeout=60, proc=proc)
    assert time.monotonic() - t0 < 5  # not the whole 60 s timeout


def test_process_that_dies_while_waited_for():
    url = f"http://127.0.0.1:{free_port()}/health"
    proc = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(0.5); sys.exit(7)"])
    t0 = time.monotonic()
    with pytest.raises(NotHealthyError, match="exited with code 7"):
        wait_healthy(url, timeout=60, proc=proc, interval=0.05)
    assert time.monotonic() - t0 < 30
