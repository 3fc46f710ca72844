"""One exception type for problems the user can fix: the CLI prints it as a single line, no traceback."""


class NtkError(Exception):
    """A user-facing error: bad input, bad checkpoint, bad option. Message names the file/record and the fix."""


class CheckpointError(NtkError):
    """A checkpoint directory or file that cannot be loaded safely or does not match its config."""


class InputError(NtkError):
    """An input file (FASTA, BED, VCF, ...) that is malformed or inconsistent with another input."""
