"""Run nbiatoolkit's downloadSeries against a local NBIA-compatible server (benchmark contender).

Usage: python nbiatoolkit_run.py SERVICES_URL MANIFEST OUT [N_PARALLEL]
SERVICES_URL is the un-versioned base (".../nbia-api/services/"); nbiatoolkit is pointed at it by
setting ``client.base_url`` and ``client.OAuth_client.base_url`` (it logs in as nbia_guest).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from nbiatoolkit import NBIAClient


def main() -> None:
    base, manifest, out = sys.argv[1], sys.argv[2], sys.argv[3]
    parallel = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    uids = [
        line.strip()
        for line in Path(manifest).read_text(encoding="utf-8").splitlines()
        if line.strip() and line.strip()[0].isdigit()
    ]
    client = NBIAClient(log_level="ERROR")
    client.OAuth_client.base_url = base
    client.base_url = SimpleNamespace(value=base)
    ok = client.downloadSeries(uids, downloadDir=out, nParallel=parallel)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
