"""The one base of every error dinocache raises for bad input or a failed step."""


class DinocacheError(Exception):
    """Base of every dinocache error. Its message is the whole report (`file: key: what is wrong`), so each
    command line tool catches this one class, prints `error: <message>` and exits 2."""
