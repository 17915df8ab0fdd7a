"""``python -m anomaly.annotations selftest``: write through a real app, kill it, count what survived.

Starts the app (``anomaly.ui.app.launch``) on a free local port with the given database, logs in
``writers`` concurrent ``gradio_client`` clients (a throw-away annotator, hashed password in the
app's environment only), loads the bundled example volume in each client's session, and has each
add ``flags`` flags through the ``/add_flag`` endpoint with a unique note. A flag is
*acknowledged* when its request returned. With ``kill`` the app gets SIGKILL once every writer is
writing and about half of the flags are acknowledged, mid-stream; the writers stop at the first failed request; the app is
then restarted on the same database. Every note is then looked up in the database:

    acknowledged N / found N / lost N / duplicated N / integrity ok

``lost`` counts acknowledged flags missing from the database, ``duplicated`` notes stored more
than once; the exit status is 1 if either is non-zero or the integrity check fails.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from anomaly.ui.process import free_port, start_app

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "examples" / "healthy_t1.nii.gz"
USER = "selftest"


def _start_app(db: Path, port: int, users: str, log_path: Path) -> subprocess.Popen:
    env = dict(ANOMALY_ANNOTATIONS_DB=str(db), ANOMALY_USERS=users, ANOMALY_READ_ONLY="0")
    return start_app(env, log_path, port=port, timeout_s=300, new_session=True)[0]


def _writer(url: str, password: str, wid: int, n: int, prefix: str, acked: list, stop: threading.Event,
            errors: list, ready: list) -> None:
    from gradio_client import Client, handle_file

    for attempt in range(3):  # a start-up request cut under load is retried with a fresh session
        try:
            c = Client(url, verbose=False)
            token = c.predict(USER, password, api_name="/login")[0]
            c.predict([handle_file(str(EXAMPLE))], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                      api_name="/analyse_view")
            break
        except Exception as e:  # noqa: BLE001 - reported in the summary
            if attempt == 2:
                errors.append(f"writer {wid} could not start: {e}")
                return
            time.sleep(1.0)
    ready.append(wid)
    for i in range(n):
        if stop.is_set():
            return
        note = f"{prefix}-w{wid}-{i}"
        # a region of its own per writer and flag (the same flag again within seconds is refused as a
        # double click): slice x row cycle over 400 flags, one column offset per writer
        r0, c0 = 4 + (i // 10) % 40, 10 + wid % 16
        try:
            c.predict(20 + i % 10, "zscore", "false_positive", "noise", note, "box", r0, c0, r0 + 12, c0 + 20, None,
                      None, 1.0, token, api_name="/add_flag")
        except Exception:  # noqa: BLE001 - the app was killed: this flag is not acknowledged
            return
        acked.append(note)


def run_selftest(db: Path, writers: int = 8, flags: int = 200, kill: bool = True, out=print) -> int:
    """Run the self-test on ``db``; prints one figure a line; returns the exit status."""
    from anomaly.annotations.auth import hash_password
    from anomaly.annotations.store import Store

    db = Path(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    Store(db)  # create / migrate before the app opens it
    password = secrets.token_urlsafe(12)
    users = f"{USER}:" + hash_password(password, 1000)
    prefix = "selftest-" + secrets.token_hex(4)
    log_path = Path(tempfile.gettempdir()) / f"anomaly-selftest-{os.getpid()}.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    app = _start_app(db, port, users, log_path)
    acked: list[str] = []
    errors: list[str] = []
    ready: list[int] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_writer, args=(url, password, w, flags, prefix, acked, stop, errors, ready),
                                daemon=True) for w in range(writers)]
    killed = False
    dropped: list[str] = []
    hook = threading.excepthook

    def quiet(args):  # gradio_client's stream threads die with the killed app: count, don't print
        dropped.append(args.exc_type.__name__)

    threading.excepthook = quiet
    # gradio_client also prints the traceback of a stream cut by the kill to stderr: keep it out of
    # the report (its count is reported instead)
    err = io.StringIO()
    redirect = contextlib.redirect_stderr(err)
    redirect.__enter__()
    try:
        for t in threads:
            t.start()
        target = writers * flags // 2
        while any(t.is_alive() for t in threads):
            all_writing = len(ready) + len(errors) >= writers  # the kill lands while every writer writes
            if kill and not killed and all_writing and len(acked) >= target:
                os.killpg(app.pid, signal.SIGKILL)  # mid-write: the writers are still sending
                app.wait(timeout=30)
                killed = True
                stop.set()
            time.sleep(0.05)
        for t in threads:
            t.join(timeout=60)
        if killed:
            app = _start_app(db, port, users, log_path)  # restarted on the same database
    finally:
        redirect.__exit__(None, None, None)
        threading.excepthook = hook
        n_printed = err.getvalue().count("Traceback (most recent call last)")
        dropped[:] = dropped if len(dropped) >= n_printed else ["stream"] * n_printed  # the same failures, counted once
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGTERM)
            try:
                app.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(app.pid, signal.SIGKILL)
    store = Store(db, read_only=True)
    notes = Counter(f.note for f in store.list_flags(include_deleted=True) if f.note.startswith(prefix + "-"))
    integrity = store.integrity_check()
    lost = [n for n in acked if n not in notes]
    duplicated = sum(c - 1 for c in notes.values() if c > 1)
    for e in errors:
        out(f"error {e}")
    out(f"writers {writers}")
    out(f"killed {'yes' if killed else 'no'}" + (f" ({len(dropped)} client connection(s) dropped)" if dropped else ""))
    out(f"acknowledged {len(acked)}")
    out(f"found {sum(1 for n in set(acked) if n in notes)}")
    out(f"written {sum(notes.values())}")
    out(f"lost {len(lost)}")
    out(f"duplicated {duplicated}")
    out(f"integrity {integrity}")
    return 0 if (not lost and not duplicated and integrity == "ok" and not errors) else 1
