"""A tiny writer of RAR 4.x archives with stored (uncompressed) members, for tests.

Nothing on the development machines creates RAR files, so the tests write their own.
Layout of a RAR 4.x archive: the 7-byte marker block, an archive header, then per member
a file header followed by the member's bytes, and an end-of-archive block. Every block
starts with HEAD_CRC (low 16 bits of the CRC-32 of the rest of the header), HEAD_TYPE,
HEAD_FLAGS and HEAD_SIZE.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

MARKER = b"Rar!\x1a\x07\x00"
BLOCK_MAIN = 0x73
BLOCK_FILE = 0x74
BLOCK_END = 0x7B
FLAG_LONG_BLOCK = 0x8000  # the header is followed by PACK_SIZE bytes of data
FLAG_SKIP_IF_UNKNOWN = 0x4000
METHOD_STORE = 0x30
METHOD_NORMAL = 0x33  # a compressed method; only used to fake "needs a decompressor"
HOST_UNIX = 3
UNPACK_VERSION = 29  # RAR 2.9 / 3.x format
UNIX_FILE_MODE = 0o100644
DOS_TIME_2025_01_01 = ((2025 - 1980) << 25) | (1 << 21) | (1 << 16)


def _block(head_type: int, flags: int, body: bytes) -> bytes:
    size = 7 + len(body)
    after_crc = struct.pack("<BHH", head_type, flags, size) + body
    return struct.pack("<H", zlib.crc32(after_crc) & 0xFFFF) + after_crc


def file_block(name: str, data: bytes, method: int = METHOD_STORE) -> bytes:
    """Header + bytes of one member. With a method other than store the bytes are still
    written as they are: enough for a reader to decide it needs a decompressor."""
    raw_name = name.encode("ascii")
    fields = struct.pack(
        "<LLBLLBBHL", len(data), len(data), HOST_UNIX, zlib.crc32(data) & 0xFFFFFFFF,
        DOS_TIME_2025_01_01, UNPACK_VERSION, method, len(raw_name), UNIX_FILE_MODE,
    )
    return _block(BLOCK_FILE, FLAG_LONG_BLOCK, fields + raw_name) + data


def rar4_bytes(members: dict[str, bytes], method: int = METHOD_STORE) -> bytes:
    """A whole archive holding ``members`` (name -> bytes), in insertion order."""
    parts = [MARKER, _block(BLOCK_MAIN, 0, b"\x00" * 6)]
    parts += [file_block(name, data, method) for name, data in members.items()]
    parts.append(_block(BLOCK_END, FLAG_SKIP_IF_UNKNOWN, b""))
    return b"".join(parts)


def write_rar4(path: str | Path, members: dict[str, bytes], method: int = METHOD_STORE) -> Path:
    path = Path(path)
    path.write_bytes(rar4_bytes(members, method))
    return path
