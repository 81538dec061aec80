"""A threaded HTTP server for test fakes that stays silent when a client hangs up.

http.server prints a traceback to stderr for every error in a request thread, a client that resets a
kept-alive connection included. Tests that read stderr (a CLI's error must carry no traceback) then see
the fake's noise, depending on timing; a reset connection is the client's business, not a fault here."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)
