"""Errors meant for the person at the terminal: the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input, config or environment, with a message that says what to fix."""
