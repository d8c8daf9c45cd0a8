"""A zip writer whose memory does not grow with the number of members.

Python's `zipfile` keeps a `ZipInfo` (about 0.55 KB) per member until it writes the
central directory at close, which is half a gigabyte for a million-WAV job. The
libraries that stream zips (stream-zip, zipstream-ng) also keep one record per
member in memory. So this writer spills each member's central-directory record
to an anonymous temporary file as soon as the member is written, and copies that
file behind the members at the end: memory is a few fixed buffers however many
members there are.

The format follows PKWARE's APPNOTE and matches what `zipfile` writes for the
same files (names, order, stored/deflated data, timestamps, Unix mode bits), so
`zipfile`, `unzip` and other readers see the same archive. ZIP64 records are used
where a count, size or offset does not fit the classic fields: more than 65,535
members, members or archives over 4 GiB.

The output must be a seekable regular file: each member's CRC and sizes are
patched into its local header once its data is written (no data descriptors).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import BinaryIO

# Classic field limits; past them the field holds the all-ones marker and the real
# value goes into a ZIP64 record. Module-level so tests can lower them.
ZIP64_LIMIT = 0xFFFFFFFF  # sizes and offsets (4 GiB - 1)
ZIP_FILECOUNT_LIMIT = 0xFFFF  # members in the end record

STORED = 0
DEFLATED = 8

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header, 30 bytes
_CENTRAL = struct.Struct("<4sBBHHHHHIIIHHHHHII")  # central directory header, 46 bytes
_END = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
_END64 = struct.Struct("<4sQHHIIQQQQ")  # ZIP64 end of central directory, 56 bytes
_END64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes
_ZIP64_EXTRA_ID = 0x0001
_UTF8_NAME = 0x800  # general purpose flag bit 11: the name is UTF-8
_MADE_BY_UNIX = 3
_CRC_OFFSET = 14  # of the CRC-32 field inside the local header
_CHUNK = 1 << 20


class StreamingZipWriter:
    """Append files to a zip being written to `out`; `close()` writes the central directory.

    `spill_dir` holds the anonymous temporary file for the central directory (it
    has no name on Linux, so a crash leaves nothing behind). Not reusable after
    `close()`; after an exception the output is incomplete and must be discarded.
    """

    def __init__(self, out: BinaryIO, *, spill_dir: Path | None = None) -> None:
        self._out = out
        self._start = out.tell()
        self._spill = tempfile.TemporaryFile(dir=spill_dir)  # noqa: SIM115 - lives as long as the writer; close() ends it
        self._count = 0
        self._closed = False
        self.comment = b""  # the archive comment, written in the end record

    def __enter__(self) -> StreamingZipWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._spill.close()

    def write_file(self, path: Path, arcname: str, *, compress: int = STORED) -> None:
        """Add the file at `path` under `arcname`, stored or deflated like `ZipFile.write`."""
        if self._closed:
            raise ValueError("zip writer is closed")
        if compress not in (STORED, DEFLATED):
            raise ValueError(f"unsupported compression {compress}")
        with open(path, "rb") as src:
            st = os.fstat(src.fileno())
            # The same rule as zipfile: a local ZIP64 record once the size is near the limit,
            # because the deflated size is only known afterwards.
            zip64 = st.st_size * 1.05 > ZIP64_LIMIT
            self._write_member(src, st.st_mtime, st.st_mode, arcname, compress, zip64)

    def write_bytes(self, data: bytes, arcname: str, *, compress: int = STORED) -> None:
        """Add `data` under `arcname` (a regular file, mode 0644, dated now), like `ZipFile.writestr`."""
        if self._closed:
            raise ValueError("zip writer is closed")
        if compress not in (STORED, DEFLATED):
            raise ValueError(f"unsupported compression {compress}")
        zip64 = len(data) * 1.05 > ZIP64_LIMIT
        self._write_member(io.BytesIO(data), time.time(), stat.S_IFREG | 0o644, arcname, compress, zip64)

    def _write_member(self, src: BinaryIO, mtime: float, mode: int, arcname: str, compress: int, zip64: bool) -> None:
        out = self._out
        name = arcname.encode("utf-8")  # ASCII names are the same bytes
        flags = 0 if arcname.isascii() else _UTF8_NAME
        dos_time, dos_date = _dos_timestamp(mtime)
        version = 45 if zip64 else 20
        offset = out.tell() - self._start
        extra = struct.pack("<HHQQ", _ZIP64_EXTRA_ID, 16, 0, 0) if zip64 else b""
        marker = 0xFFFFFFFF if zip64 else 0
        out.write(
            _LOCAL.pack(
                b"PK\x03\x04", version, flags, compress, dos_time, dos_date, 0, marker, marker, len(name), len(extra)
            )
        )
        out.write(name)
        out.write(extra)

        crc = 0
        size = 0
        compressed = 0
        deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15) if compress == DEFLATED else None
        while chunk := src.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            if deflater is not None:
                chunk = deflater.compress(chunk)
            compressed += len(chunk)
            out.write(chunk)
        if deflater is not None:
            tail = deflater.flush()
            compressed += len(tail)
            out.write(tail)
        if not zip64 and (size > ZIP64_LIMIT or compressed > ZIP64_LIMIT):
            # The file grew past the limit while it was read: its local header has no room for the sizes.
            raise OSError(f"{arcname!r} grew past 4 GiB while it was being zipped")

        end = out.tell()
        out.seek(self._start + offset + _CRC_OFFSET)
        if zip64:
            out.write(struct.pack("<I", crc))
            out.seek(self._start + offset + _LOCAL.size + len(name) + 4)
            out.write(struct.pack("<QQ", size, compressed))
        else:
            out.write(struct.pack("<III", crc, compressed, size))
        out.seek(end)

        # Central record: ZIP64 fields only for what does not fit, in APPNOTE order
        # (sizes together, as the local header has them, then the offset).
        big_sizes = zip64 or size > ZIP64_LIMIT or compressed > ZIP64_LIMIT
        big_offset = offset > ZIP64_LIMIT
        fields: tuple[int, ...] = (size, compressed) if big_sizes else ()
        fields += (offset,) if big_offset else ()
        cextra = struct.pack(f"<HH{len(fields)}Q", _ZIP64_EXTRA_ID, 8 * len(fields), *fields) if fields else b""
        if fields:
            version = 45
        self._spill.write(
            _CENTRAL.pack(
                b"PK\x01\x02",
                version,
                _MADE_BY_UNIX,
                version,
                flags,
                compress,
                dos_time,
                dos_date,
                crc,
                0xFFFFFFFF if big_sizes else compressed,
                0xFFFFFFFF if big_sizes else size,
                len(name),
                len(cextra),
                0,
                0,
                0,
                (mode & 0xFFFF) << 16,
                0xFFFFFFFF if big_offset else offset,
            )
        )
        self._spill.write(name)
        self._spill.write(cextra)
        self._count += 1

    def close(self) -> None:
        """Copy the central directory behind the members and write the end records."""
        if self._closed:
            return
        self._closed = True
        out = self._out
        try:
            cd_offset = out.tell() - self._start
            cd_size = self._spill.tell()
            self._spill.seek(0)
            shutil.copyfileobj(self._spill, out, _CHUNK)
        finally:
            self._spill.close()
        count = self._count
        if count > ZIP_FILECOUNT_LIMIT or cd_offset > ZIP64_LIMIT or cd_size > ZIP64_LIMIT:
            end64_offset = out.tell() - self._start
            out.write(_END64.pack(b"PK\x06\x06", _END64.size - 12, 45, 45, 0, 0, count, count, cd_size, cd_offset))
            out.write(_END64_LOCATOR.pack(b"PK\x06\x07", 0, end64_offset, 1))
            count = min(count, 0xFFFF)
            cd_size = min(cd_size, 0xFFFFFFFF)
            cd_offset = min(cd_offset, 0xFFFFFFFF)
        out.write(_END.pack(b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, len(self.comment)))
        out.write(self.comment)
        out.flush()


def _dos_timestamp(mtime: float) -> tuple[int, int]:
    """MS-DOS time and date fields in local time, as zipfile writes them.

    Outside the format's 1980..2107 range, the nearest end of it (zipfile would raise).
    """
    t = time.localtime(mtime)
    if t.tm_year < 1980:
        return 0, 1 << 5 | 1  # 1980-01-01 00:00:00
    if t.tm_year > 2107:
        return 23 << 11 | 59 << 5 | 29, 127 << 9 | 12 << 5 | 31  # 2107-12-31 23:59:58
    return t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2, (t.tm_year - 1980) << 9 | t.tm_mon << 5 | t.tm_mday
