"""An NBIA-compatible server over a synthetic archive, for tests, the demo and benchmarks.

:class:`ArchiveSpec` describes a deterministic archive and :class:`FakeArchive` builds it (real
DICOM files, cached on disk); :class:`FakeNbiaServer` serves it over HTTP as NBIA's REST API does,
quirks included, with :class:`Fault` s scripted per series and attempt through a
:class:`FaultPlan`. :func:`run_in_thread` runs a server beside synchronous code and
:func:`serve_forever` backs ``bulkdl serve-fake``. Importing this package does no I/O.
"""

from __future__ import annotations

from bulkdl.testing.archive import ArchiveSpec, FakeArchive, default_cache_dir
from bulkdl.testing.faults import Fault, FaultKind, FaultPlan
from bulkdl.testing.server import FakeNbiaServer, run_in_thread, serve_forever

__all__ = [
    "ArchiveSpec",
    "FakeArchive",
    "FakeNbiaServer",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "default_cache_dir",
    "run_in_thread",
    "serve_forever",
]
