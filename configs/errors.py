"""The project's one base error: a problem with what the user asked for (a config key, a file, a
command-line value, a cluster too small), whose message says what is wrong and what is valid.
The command line prints such errors as one line and exits with status 2; anything else is a bug
and keeps its traceback. Each room subclasses it (ConfigError, CheckpointError, ...)."""


class Error(Exception):
    """Base class of the errors whose message is meant for the user."""
