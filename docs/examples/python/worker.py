#!/usr/bin/env python3
"""An example sagalog worker: the scanner of docs/example-config.toml (`run_scan` and its
compensation `delete_scan` on the queue "scans").

Its "effect" is a row in a SQLite file (reports.sqlite by default). It shows how a worker keeps
the at-least-once contract: the effect and the task's idempotency key are written in ONE
SQLite transaction, and a task whose key is already there answers the stored output again
without redoing anything. So a task handed out twice (a worker killed mid-task, an expired
lease, a server restart) leaves one report.

    python3 worker.py --server 127.0.0.1:50051 --queue scans [--token T] [--db reports.sqlite]

Demo knobs: a target "fail-me" fails for good (the saga compensates its earlier steps);
$SCAN_SECONDS makes a scan take that long (it stops early, failing, if the saga is cancelled).
"""

import argparse
import json
import logging
import os
import sqlite3
import threading

from sagalog_worker import TaskFailed, Worker

_lock = threading.Lock()  # one writer at a time on the SQLite file


def open_db(path):
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY, output TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS reports (report_id TEXT PRIMARY KEY, target TEXT NOT NULL, saga_id TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS cancelled (key TEXT PRIMARY KEY)")
    return db


def once(db, key, effect):
    """Runs `effect(db)` (returning the output dict) and records `key` with the output in one
    transaction; a key recorded before answers its stored output."""
    with _lock:
        row = db.execute("SELECT output FROM done WHERE key = ?", (key,)).fetchone()
        if row is not None:
            logging.info("task %s was done before: answering the same output", key)
            return json.loads(row[0])
        db.execute("BEGIN IMMEDIATE")
        try:
            output = effect(db)
            db.execute("INSERT INTO done (key, output) VALUES (?, ?)", (key, json.dumps(output)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return output


def main():
    parser = argparse.ArgumentParser(description="the scanner example worker")
    parser.add_argument("--server", default=os.environ.get("SAGALOG_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--queue", default="scans")
    parser.add_argument("--token", default=os.environ.get("SAGALOG_TOKEN"))
    parser.add_argument("--db", default="reports.sqlite")
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")

    db = open_db(args.db)
    worker = Worker(args.server, args.queue, token=args.token, worker_id=args.worker_id, concurrency=args.concurrency)
    scan_seconds = float(os.environ.get("SCAN_SECONDS", "0"))

    @worker.task("run_scan")
    def run_scan(task):
        target = task.params["target"]
        logging.info("%r: scanning %s", task, target)
        if target == "fail-me":
            raise TaskFailed(f"target {target!r} refused the scan", retryable=False)
        try:
            task.sleep(scan_seconds)  # the scan itself; raises Cancelled if the saga is cancelled
        except Exception:
            with _lock:
                db.execute("INSERT OR IGNORE INTO cancelled (key) VALUES (?)", (task.idempotency_key,))
            raise
        report_id = f"report-{task.saga_id}"

        def effect(db):
            db.execute("INSERT INTO reports (report_id, target, saga_id) VALUES (?, ?, ?)",
                       (report_id, target, task.saga_id))
            return {"report_id": report_id}

        return once(db, task.idempotency_key, effect)

    @worker.task("delete_scan")
    def delete_scan(task):
        report_id = task.params["output.report_id"]
        logging.info("%r: deleting %s", task, report_id)

        def effect(db):
            db.execute("DELETE FROM reports WHERE report_id = ?", (report_id,))
            return {}

        return once(db, task.idempotency_key, effect)

    worker.run()


if __name__ == "__main__":
    main()
