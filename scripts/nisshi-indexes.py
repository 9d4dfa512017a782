#!/usr/bin/env python3
"""Adds the indexes nisshi's SQLite schema lacks, once the broker has made its tables:
one on the watermark's partition, and, for nisshi 0.7 (whose `header` table has no key),
one for a record's headers, without which every fetched record scanned the whole
`header` table and a broker holding tens of thousands of records stalled. 0.8's
primary key on `header` serves that lookup (docs/ARCHITECTURE.md, local broker).
Idempotent; safe while the broker runs (WAL).

    scripts/nisshi-indexes.py [--wait SECONDS] PATH/TO/nisshi.db
"""
import argparse
import sqlite3
import sys
import time

INDEXES = [
    # watermark_select.sql joins watermark on topition.
    "create index if not exists watermark_by_topition on watermark (topition)",
]
# header_fetch.sql looks up one record's headers by (topition, offset_id): only when
# `header` has no primary key (nisshi 0.7) does it need this.
HEADER_INDEX = "create index if not exists header_by_record on header (topition, offset_id)"


def main() -> int:
    parser = argparse.ArgumentParser(description="Adds the indexes nisshi's SQLite schema lacks.")
    parser.add_argument("database", help="nisshi's SQLite file (it must exist: nisshi made it)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for nisshi's tables")
    args = parser.parse_args()
    deadline = time.time() + args.wait
    while True:
        db = None
        try:
            # mode=rw: never create a stray empty database at a wrong path.
            db = sqlite3.connect(f"file:{args.database}?mode=rw", uri=True, timeout=30)
            tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
            if {"header", "watermark"} <= tables:
                break
        except sqlite3.Error:
            pass
        if db is not None:
            db.close()
        if time.time() > deadline:
            print(f"nisshi-indexes: no nisshi tables in {args.database} after {args.wait:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    try:
        keyed = any(row[5] for row in db.execute("pragma table_info(header)"))
        for statement in INDEXES + ([] if keyed else [HEADER_INDEX]):
            db.execute(statement)
        db.commit()
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
