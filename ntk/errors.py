"""One exception type for problems the user can fix: the CLI prints it as a single line, no traceback."""


class NtkError(Exception):
    """A user-facing error: bad input, bad checkpoint, bad option. Message names the file/record and the fix."""


class CheckpointError(NtkError):
    """A checkpoint directory or file that cannot be loaded safely or does not match its config."""


class InputError(NtkError):
    """An input file (FASTA, BED, VCF, ...) that is malformed or inconsistent with another input."""


class Interrupted(BaseException):
    """SIGTERM/SIGINT/SIGHUP received: raised in the main thread so that every ``with``/``finally`` removes its
    temporary outputs on the way out; the CLI then exits with 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
