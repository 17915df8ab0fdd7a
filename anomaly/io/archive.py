"""Safe zip extraction: no absolute paths, no '..', no links, no zip bombs.

Members are written flat (``00001_name``) into a folder the caller owns, so nothing
can land outside it; the real number of bytes written is counted, so a lying header
cannot get past the size limit.
"""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path

from anomaly.errors import (
    CorruptFileError,
    FileTooLargeError,
    UnsafeArchiveError,
    UnsupportedFileError,
)

MAX_MEMBERS = 20_000
MAX_RATIO = 200.0  # uncompressed / compressed, for the archive as a whole
MAX_MEMBER_RATIO = 1000.0  # for one member above RATIO_MIN_BYTES
RATIO_MIN_BYTES = 1 << 20
_CHUNK = 1 << 20
_JUNK = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|\._|Thumbs\.db$)", re.IGNORECASE)


def mb_text(n: float) -> str:
    """A size limit or file size in a message: "512.0 MB" (also anomaly.io.loader's)."""
    return f"{n / 1e6:.1f} MB"


def is_unsafe_member(filename: str) -> bool:
    """True for absolute paths, drive letters, or any '..' component."""
    if filename.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", filename):
        return True
    return any(part == ".." for part in re.split(r"[\\/]+", filename))


def _safe_basename(filename: str, i: int) -> str:
    base = re.split(r"[\\/]+", filename.rstrip("/\\"))[-1] or f"member{i}"
    base = re.sub(r"[^\w.\-+ ]", "_", base)[:120]
    return base


def extract_zip(path: Path, dest: Path, max_bytes: int, name: str | None = None) -> list[tuple[Path, str]]:
    """Extract the files of zip ``path`` into ``dest``; return (path, display name) pairs.

    Raises ``UnsafeArchiveError`` (unsafe paths, links, bombs), ``FileTooLargeError``
    (more than ``max_bytes`` uncompressed), ``CorruptFileError`` (bad zip or CRC) or
    ``UnsupportedFileError`` (encrypted members, unknown compression).
    """
    name = name or Path(path).name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, IndexError) as e:
        raise CorruptFileError(f"{name}: not a readable zip archive ({type(e).__name__})") from None
    out: list[tuple[Path, str]] = []
    with zf:
        try:
            infos = zf.infolist()
        except Exception as e:  # noqa: BLE001
            raise CorruptFileError(f"{name}: the zip directory is corrupt ({type(e).__name__})") from None
        if len(infos) > MAX_MEMBERS:
            raise UnsafeArchiveError(f"{name}: {len(infos)} members (more than {MAX_MEMBERS}); archive refused")
        files = []
        for info in infos:
            if is_unsafe_member(info.filename):
                raise UnsafeArchiveError(
                    f"{name}: a member has an absolute path or '..' in its path; archive refused"
                )
            mode = (info.external_attr >> 16) & 0xFFFF
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"{name}: the archive holds a symbolic link; archive refused")
            if info.is_dir() or _JUNK.search(info.filename):
                continue
            if info.flag_bits & 0x1:
                raise UnsupportedFileError(f"{name}: password-protected zip archives are not supported")
            files.append(info)
        declared = sum(i.file_size for i in files)
        packed = sum(i.compress_size for i in files)
        ratio = declared / max(packed, 1)
        if declared > max_bytes:
            if ratio > MAX_RATIO:
                raise UnsafeArchiveError(
                    f"{name}: would expand to {mb_text(declared)} from {mb_text(packed)} "
                    f"(ratio {ratio:.0f}:1): looks like a zip bomb; archive refused"
                )
            raise FileTooLargeError(
                f"{name}: holds {mb_text(declared)} uncompressed, above the {mb_text(max_bytes)} limit"
            )
        for info in files:
            r = info.file_size / max(info.compress_size, 1)
            if info.file_size > RATIO_MIN_BYTES and r > MAX_MEMBER_RATIO:
                raise UnsafeArchiveError(
                    f"{name}: a member expands {r:.0f}:1: looks like a zip bomb; archive refused"
                )
        written = 0
        for i, info in enumerate(files):
            base = _safe_basename(info.filename, i)
            target = dest / f"{i:05d}_{base}"
            member_bytes = 0
            try:
                with zf.open(info) as src, open(target, "xb") as dst:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        member_bytes += len(chunk)
                        written += len(chunk)
                        if member_bytes > info.file_size or written > max_bytes:
                            raise UnsafeArchiveError(
                                f"{name}: a member expands beyond its declared size or the "
                                f"{mb_text(max_bytes)} limit; archive refused"
                            )
                        dst.write(chunk)
            except UnsafeArchiveError:
                raise
            except NotImplementedError:
                raise UnsupportedFileError(
                    f"{name}: uses a zip compression method that is not supported"
                ) from None
            except Exception as e:  # noqa: BLE001 - bad CRC, truncated stream, zlib errors
                raise CorruptFileError(f"{name}: the archive is corrupt ({type(e).__name__})") from None
            out.append((target, f"{base} (in {name})"))
    return out
