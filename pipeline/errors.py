"""The one error type the command line turns into a single line and exit code 2."""


class ConfigError(Exception):
    """Bad input: a config field, file or store that cannot be used as asked.

    The message names the field or file and what was expected; it is printed alone, without a
    traceback, before any work starts.
    """
