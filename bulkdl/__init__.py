"""bulkdl: an async bulk downloader and DICOM organizer for imaging archives (TCIA's NBIA first).

The package reads manifests, asks an archive what each series holds, streams and verifies the
series, and lays the files out as a Patient/Study/Series tree. This module only names the version.
"""

from __future__ import annotations

__version__ = "0.1.0"
