"""TVM's warning about out-of-bounds embedding gathers, which the bundles make moot, kept off stderr."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

GATHER_WARNING = "Fast mode segfaults when there are out-of-bounds indices"


@contextlib.contextmanager
def without_gather_warnings() -> Iterator[None]:
    """Drop TVM's C++ warning that the embedding gather reads out of bounds on bad ids (printed once
    per gather): every backend checks token ids before they reach the library. Other lines pass."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if GATHER_WARNING not in line:
                    print(line, file=sys.stderr)
