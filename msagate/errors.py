"""
Exceptions shared across msagate's seams.
"""


class TemporaryAuthFailure(Exception):
    """
    A credential checker or a realm could not reach its backend (an
    unreadable file, a directory that is down or too slow).

    The client is told to try again later (454 4.7.0); a wrong password is
    L{twisted.cred.error.UnauthorizedLogin} instead.  The message is for the
    operator's log and never reaches the client.
    """


class ConfigError(Exception):
    """
    The configuration cannot be used.

    Its text is one line naming the file, the section and the option, so
    that start-up can stop with exactly that line.
    """

    def __init__(
        self,
        path: str,
        section: str | None,
        option: str | None,
        problem: str,
    ) -> None:
        where = [f"[{section}] {option}" if option else f"[{section}]"]
        where = where if section else []
        super().__init__(": ".join([path, *where, problem]))
        self.path = path
        self.section = section
        self.option = option
        self.problem = problem
