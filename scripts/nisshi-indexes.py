#!/usr/bin/env python3
"""Adds the indexes nisshi 0.7.0-pre.2's SQLite schema lacks, once the broker has made
its tables: without them every fetched record's headers are found by scanning the whole
`header` table, which stalls a broker holding tens of thousands of records
(docs/ARCHITECTURE.md, local broker). Idempotent; safe while the broker runs (WAL).

    scripts/nisshi-indexes.py PATH/TO/nisshi.db [--wait SECONDS]
"""
import sqlite3
import sys
import time

INDEXES = [
    # header_fetch.sql looks up one record's headers by (topition, offset_id).
    "create index if not exists header_by_record on header (topition, offset_id)",
    # watermark_select.sql joins watermark on topition.
    "create index if not exists watermark_by_topition on watermark (topition)",
]


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = sys.argv[1]
    wait = float(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--wait" else 60.0
    deadline = time.time() + wait
    while True:
        try:
            db = sqlite3.connect(path, timeout=30)
            tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
            if {"header", "watermark"} <= tables:
                break
            db.close()
        except sqlite3.Error:
            pass
        if time.time() > deadline:
            print(f"nisshi-indexes: {path} has no nisshi tables after {wait:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    for statement in INDEXES:
        db.execute(statement)
    db.commit()
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
