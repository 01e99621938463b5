"""One error type for bad input, so the CLI can print a one-line message instead of a traceback."""


class PremError(ValueError):
    """Bad input: the message names the key, file or value at fault."""


class Missing(PremError):
    """A stage's output is not there yet: a claim reads records and never makes them (premem.claims)."""
