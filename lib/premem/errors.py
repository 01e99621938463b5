"""One error type for bad input, so the CLI can print a one-line message instead of a traceback; and
how a stop by signal becomes an exit that unwinds."""


class PremError(ValueError):
    """Bad input: the message names the key, file or value at fault."""


class Missing(PremError):
    """A stage's output is not there yet: a claim reads records and never makes them (premem.claims)."""


def terminated(signum, frame):
    """A SIGTERM handler (a scheduler's stop, `kill`): end like Ctrl-C, so atomic writes remove their
    temporaries and locks are released on the way out (the command's process and its workers)."""
    raise SystemExit(128 + signum)
