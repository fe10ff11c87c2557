"""Errors the user can fix, printed once at the CLI edge as a clear Chinese message."""
import sys

EXIT_USER_ERROR = 2


class PsyDTError(Exception):
    """A problem with the user's input, files or environment (not a bug in our code)."""


def run_cli(main, argv=None) -> int:
    """Run `main(argv)`; turn PsyDTError into one message on stderr and exit code 2."""
    try:
        return main(argv) or 0
    except PsyDTError as err:
        print(f"错误：{err}", file=sys.stderr)
        return EXIT_USER_ERROR
