"""Run tcia_utils' downloadSeries against a local NBIA-compatible server (benchmark contender).

Usage: python tcia_utils_run.py BASE_URL MANIFEST OUT [MAX_WORKERS]
BASE_URL is the v4 base (".../nbia-api/services/v4/"); tcia_utils is pointed at it by replacing
``tcia_utils.nbia.setApiUrl``, the function every call uses to build its URLs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tcia_utils.nbia as nbia


def main() -> None:
    base, manifest, out = sys.argv[1], sys.argv[2], sys.argv[3]
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    nbia.setApiUrl = lambda endpoint, api_url="": base
    uids = [
        line.strip()
        for line in Path(manifest).read_text(encoding="utf-8").splitlines()
        if line.strip() and line.strip()[0].isdigit()
    ]
    nbia.downloadSeries(uids, input_type="list", path=out, max_workers=workers)


if __name__ == "__main__":
    main()
