"""Errors whose message alone tells the user what to change: the entry points print it without a traceback."""


class ConfigError(RuntimeError):
    """The run cannot go on as configured (missing weights, say); the message names the setting to change."""
