"""bulkdl: an async bulk downloader and DICOM organizer for imaging archives (TCIA's NBIA first).

The package reads manifests, asks an archive what each series holds, streams and verifies the
series, and lays the files out as a Patient/Study/Series tree. ``bulkdl.download(...)`` (blocking)
and ``bulkdl.adownload(...)`` (async) are the Python entry points, imported on first use so that
``import bulkdl`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "adownload", "download"]


def __getattr__(name: str) -> Any:
    if name in ("download", "adownload"):
        from bulkdl import api

        return getattr(api, name)
    raise AttributeError(f"module 'bulkdl' has no attribute {name!r}")
