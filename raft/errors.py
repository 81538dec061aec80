"""User-facing errors: the CLI prints these as one clear message (no traceback) and exits with code 2."""


class RaftError(Exception):
    """Something the user can fix: bad input, a missing file, an impossible setting. Say what and how."""
