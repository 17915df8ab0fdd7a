"""``python -m anomaly.annotations COMMAND``: exports, import, data set and annotator accounts.

    export-dataset --out DIR [--only-done]     reviewed slices in the data-set format (+ fp_rates.csv)
    export-csv --out FILE [--study KEY]        one row per flag, with provenance
    export-json --out FILE [--study KEY]       flags with masks (re-importable)
    export --format csv|json --out FILE        the same two, one command
    import-json FILE                           import, skipping flags whose id is already stored
    export-nifti STUDY_KEY --out FILE.nii.gz   a study's flagged regions as a NIfTI label map
    export-seg STUDY_KEY --dicom DIR --out FILE.dcm [--series KEY]   confirmed findings as DICOM SEG on the source series
    fp-rates --out FILE                        per-method false positives per reviewed scan
    add-user NAME [--users-file F]             reads the password from stdin (prompted on a terminal)
    history FLAG_ID                            every version of a flag: who, when, what it read (JSON lines)
    check                                      schema version, integrity check and counts
    backup --out FILE.sqlite                   a complete copy (flags, history, cases, reviewed slices), safe while the app writes
    selftest [--writers 8] [--flags 200] [--kill]   write through a real app, SIGKILL it, count what survived

Every command takes ``--db PATH`` (default ``$ANOMALY_ANNOTATIONS_DB`` or data/annotations.sqlite).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from anomaly.errors import AnomalyError


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=Path, default=None,
                        help="annotation database (default $ANOMALY_ANNOTATIONS_DB or $ANOMALY_DATA_DIR/annotations.sqlite)")
    p = argparse.ArgumentParser(prog="python -m anomaly.annotations", description=__doc__.split("\n")[0],
                                parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("export-dataset", parents=[common], help="reviewed cases in the data-set format")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--only-done", action="store_true", help="only cases whose review status is 'done'")
    for name, what in (("export-csv", "flags as CSV"), ("export-json", "flags as JSON (with masks)")):
        s = sub.add_parser(name, parents=[common], help=what)
        s.add_argument("--out", type=Path, required=True)
        s.add_argument("--study", default=None, help="only this study key")
        s.add_argument("--include-deleted", action="store_true", default=name == "export-json")
    s = sub.add_parser("export", parents=[common], help="flags as CSV or JSON, without starting the app")
    s.add_argument("--format", choices=("csv", "json"), required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--study", default=None, help="only this study key")
    s.add_argument("--include-deleted", action="store_true", default=None)
    s = sub.add_parser("selftest", parents=[common], help="concurrent writers through a real app, killed mid-write")
    s.add_argument("--writers", type=int, default=8)
    s.add_argument("--flags", type=int, default=200, help="flags per writer")
    s.add_argument("--kill", action="store_true", help="SIGKILL the app mid-write, then restart it")
    s = sub.add_parser("import-json", parents=[common], help="import flags exported as JSON (no duplicates)")
    s.add_argument("file", type=Path)
    s.add_argument("--reviewer", default="import")
    s = sub.add_parser("export-nifti", parents=[common], help="a study's flagged regions as a NIfTI mask")
    s.add_argument("study")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--binary", action="store_true", help="1 for every region instead of label codes")
    s.add_argument("--lesions-only", action="store_true", help="only confirmed findings and missed lesions")
    s = sub.add_parser("export-seg", parents=[common], help="a study's confirmed findings as DICOM SEG")
    s.add_argument("study")
    s.add_argument("--dicom", type=Path, required=True, help="folder of the study's source DICOM series")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--with-missed", action="store_true", help="also the missed lesions (a segment each)")
    s.add_argument("--series", default=None, help="the series (its se-... key, as listed when the folder holds "
                   "several, or its SeriesInstanceUID) the flags were drawn on")
    s = sub.add_parser("fp-rates", parents=[common], help="per-method false positives per reviewed scan (CSV)")
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("add-user", parents=[common], help="add an annotator (password from stdin)")
    s.add_argument("name")
    s.add_argument("--users-file", type=Path, default=None,
                   help="default $ANOMALY_USERS_FILE or $ANOMALY_DATA_DIR/users.txt")
    s.add_argument("--iterations", type=int, default=None)
    sub.add_parser("check", parents=[common], help="schema version, integrity check, counts")
    s = sub.add_parser("backup", parents=[common], help="a complete copy of the database (flags, history, cases, "
                       "reviewed slices), consistent while the app writes; restore: stop the app, put the copy in place")
    s.add_argument("--out", type=Path, required=True, help="the copy, e.g. backups/annotations-2026-11-27.sqlite")
    s = sub.add_parser("history", parents=[common], help="every version of a flag (JSON lines, no masks)")
    s.add_argument("flag_id", help="the flag's id, or its first 8 characters as the app shows them")
    return p


WRITING_COMMANDS = ("import-json",)  # the others only read the database


def history_rows(store, flag_id: str) -> list[dict]:
    """A flag's history, oldest first: action, version, who, when, undone, and what it read before
    (label, reason, note, region box, removed); no masks. ``flag_id`` may be the 8-character prefix."""
    from anomaly.annotations.store import FlagNotFoundError

    fid = str(flag_id).strip()
    if len(fid) < 36:  # the app's short form: unique prefix
        hits = [f.id for f in store.list_flags(include_deleted=True) if (f.id or "").startswith(fid)] if fid else []
        if len(hits) != 1:
            raise FlagNotFoundError(f"no flag {fid!r}" if not hits else f"{len(hits)} flags start with {fid!r}: give more")
        fid = hits[0]
    store.get_flag(fid)
    out = []
    for h in store.history(fid):
        prev = h.get("previous") or None
        out.append({"flag_id": fid, "action": h["action"], "version": h["version"], "by": h["reviewer"], "at": h["at"],
                    "undone": h["undone"],
                    "before": None if prev is None else {k: prev.get(k) for k in ("label", "reason", "note", "box",
                                                                                   "deleted", "version")}})
    return out


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        pw = getpass.getpass(f"password for {name}: ")
        if pw != getpass.getpass("again: "):
            raise AnomalyError("the passwords differ")
        return pw
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "add-user":
            from anomaly.annotations import auth

            pw = _read_password(args.name)
            path = auth.add_user(args.name, pw, args.users_file, args.iterations or auth.DEFAULT_ITERATIONS)
            print(f"added annotator {args.name!r} to {path}")
            return 0
        if args.cmd == "selftest":
            from anomaly.annotations.config import default_db_path
            from anomaly.annotations.selftest import run_selftest

            return run_selftest(args.db or default_db_path(), args.writers, args.flags, args.kill)
        from anomaly.annotations import export as ex
        from anomaly.annotations.store import Store

        try:
            store = Store(args.db, read_only=False)  # an administrator's command: not subject to the demo mode
        except AnomalyError as e:
            if "read-only" not in str(e) or args.cmd in WRITING_COMMANDS:
                raise
            store = Store(args.db, read_only=True)  # a read-only folder: reading commands still work
        if args.cmd == "backup":
            print(store.backup(args.out))
            return 0
        if args.cmd == "export-dataset":
            info = ex.export_dataset(store, args.out, only_done=args.only_done)
            print(f"wrote {info['n_images']} reviewed slices ({info['n_with_lesion']} with a lesion mask) of "
                  f"{info['n_cases']} case(s) to {args.out}; false-positive rates in {args.out / info['fp_rates']}")
            if info["flags_without_stored_slice"]:
                print(f"note: {info['flags_without_stored_slice']} flag(s) have no stored slice and are not in the data set")
        elif args.cmd == "export":
            deleted = args.include_deleted if args.include_deleted is not None else args.format == "json"
            fn = ex.export_csv if args.format == "csv" else ex.export_json
            print(fn(store, args.out, args.study, deleted))
        elif args.cmd == "export-csv":
            print(ex.export_csv(store, args.out, args.study, args.include_deleted))
        elif args.cmd == "export-json":
            print(ex.export_json(store, args.out, args.study, args.include_deleted))
        elif args.cmd == "import-json":
            r = ex.import_json(store, args.file, args.reviewer)
            print(f"imported {r['imported']} flag(s), skipped {r['skipped']} already stored")
            if r.get("newer_skipped"):
                print(f"note: {r['newer_skipped']} of the skipped flag(s) hold a later version in the file than here "
                      "(edited elsewhere since): not merged; compare them with `history`")
        elif args.cmd == "export-nifti":
            labels = ex.LESION_LABELS if args.lesions_only else ex.LABELS
            print(ex.export_nifti(store, args.study, args.out, labels, args.binary))
        elif args.cmd == "export-seg":
            src = sorted(p for p in args.dicom.rglob("*") if p.is_file()) if args.dicom.is_dir() else [args.dicom]
            labels = ex.LESION_LABELS if args.with_missed else ("confirmed_finding",)
            print(ex.export_dicom_seg(store, args.study, src, args.out, labels, series_uid=args.series))
        elif args.cmd == "fp-rates":
            print(ex.export_fp_rates(store, args.out))
        elif args.cmd == "history":
            for row in history_rows(store, args.flag_id):
                print(json.dumps(row))
        elif args.cmd == "check":
            print(json.dumps({"db": str(store.path), "schema_version": store.schema_version(),
                              "integrity": store.integrity_check(), "flags": store.count_flags(),
                              "flags_including_removed": store.count_flags(True), "cases": len(store.list_cases())}))
        return 0
    except AnomalyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
