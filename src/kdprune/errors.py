"""User-facing errors: the CLI prints one line and exits with code 2, never a traceback."""


class UserError(Exception):
    """A mistake in the user's input (flags, config, files). Printed as one line, exit code 2."""
