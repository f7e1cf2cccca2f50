"""User-facing errors: raised for bad input, printed as one line by the CLIs (no traceback)."""
from __future__ import annotations

import re

# torch's DataLoader re-raises a worker's exception as ``type("Caught T in DataLoader worker
# process N.\nOriginal Traceback ...")``: the worker's message is the traceback's last line
_WORKER_WRAP = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


class UserError(Exception):
    """A problem with the user's input (a path, an option, a file's content).

    The message names the offending file or option and what was expected. Raised in a
    DataLoader worker (an unreadable image), it keeps its one-line message in the main process.
    """

    def __init__(self, *args: object):
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_WRAP.match(args[0]):
            last = args[0].rstrip().splitlines()[-1]  # "reid_masks.errors.UserError: <message>"
            args = (last.split(": ", 1)[1] if ": " in last else last,)
        super().__init__(*args)
