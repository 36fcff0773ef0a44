"""``python -m bulkdl``: the same command line as the ``bulkdl`` script."""

from __future__ import annotations

from bulkdl.cli import run

run()
