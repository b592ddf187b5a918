"""
Scenario 10 (B only), "unknown names": what a rosteradmin process holds
after refreshes of names the web app does not know and answers C{{}} for,
as an open refresh endpoint (no C{--refresh-authorization}) may be given.

    python -m bench.unknownnames [--names 95000] [--refreshes 3] [--cache-max-contacts N] [--state]

One Prosody (20 users, unused), the benchmark web app (C{{}} for any name
not of the form C{u<i>}), and rosteradmin with its defaults but for the
options given.  Each refresh POSTs C{--names} new names (C{x<refresh>n<k>}),
split into bodies within the default C{--max-body-bytes}; after each, and
10 s after the last: rosteradmin's VmRSS, the cached users and the cache's
charge (C{/metrics}), and C{/healthz}'s status and C{saturated} (absent
before they existed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.probes import health, metrics
from bench.refreshmemory import bodies, post, status
from bench.run import Setup

#: rosteradmin's default --max-body-bytes.
MAX_BODY = 1024 * 1024


def snapshot(setup: Setup, label: str, started: float) -> dict[str, Any]:
    values = metrics(setup)
    healthz = health(setup)
    return {
        "after": label,
        "seconds": round(time.monotonic() - started, 1),
        "RSS MB": round(status(setup.component.pid, "VmRSS"), 1),  # type: ignore[union-attr]
        "cached users": int(values["rosteradmin_cached_users"]),
        "cached contacts": int(values["rosteradmin_cached_contacts"]),
        "cache charge": int(values["rosteradmin_cache_charge"]) if "rosteradmin_cache_charge" in values else "-",
        "evictions": int(values.get("rosteradmin_cache_evictions_total", 0)),
        "healthz": healthz["status"],
        "saturated": healthz.get("saturated", "-"),
    }


def run(workdir: Path, names: int, refreshes: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
    setup = Setup(workdir, "B", 20, 10, 0.0)
    setup.extraConfig = extra
    setup.start()
    rows = []
    try:
        started = time.monotonic()
        rows.append(snapshot(setup, "start", started))
        url = f"http://127.0.0.1:{setup.httpPort}/roster_admin/refresh"
        for r in range(refreshes):
            given = [f"x{r}n{k}" for k in range(names)]
            replies = [post(url, body) for body in bodies(given, MAX_BODY)]
            updated = sum(reply["updated"] for reply in replies)
            errors = sum(reply["errors"] for reply in replies)
            rows.append({**snapshot(setup, f"refresh {r + 1}", started), "updated": updated, "errors": errors})
        time.sleep(10)
        rows.append(snapshot(setup, "10 s later", started))
    finally:
        setup.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=95000)
    parser.add_argument("--refreshes", type=int, default=3)
    parser.add_argument("--cache-max-contacts", type=int, default=None)
    parser.add_argument("--state", action="store_true", help="a --state file (else the state is in memory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        extra: dict[str, Any] = {}
        if args.cache_max_contacts is not None:
            extra["cache_max_contacts"] = args.cache_max_contacts
        if args.state:
            extra["state"] = str(Path(tmp) / "state.sqlite")
        for row in run(Path(tmp), args.names, args.refreshes, extra):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
