"""User-facing errors: the CLI prints one line and exits with code 2, never a traceback."""


class UserError(Exception):
    """A mistake in the user's input (flags, config, files). Printed as one line, exit code 2."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (torch's errors run to many lines), for one-line errors."""
    return (str(e).strip().splitlines() or [""])[0]


def check_choice(name: str, value, allowed) -> None:
    """``name: expected one of a, b, got 'x'`` unless ``value`` is one of ``allowed`` (a tuple of
    :mod:`kdprune.choices`)."""
    if value not in allowed:
        raise UserError(f"{name}: expected one of {', '.join(map(str, allowed))}, got {value!r}")
