"""File bodies on disk, one file per id under ``server.files_dir`` (else ``data_dir/files``).

A body is written to a temporary name and renamed into place, so a body
under its id is always whole: a file record never points at half a body.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import IO

from gateway.config import ServerConfig

# Ids are the gateway's own, but a path is built from one: only these characters.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class FileBodies:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def of(cls, server: ServerConfig) -> FileBodies:
        return cls(server.files_dir or server.data_dir / "files")

    def path(self, file_id: str) -> Path:
        if not _SAFE_ID.match(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.root / file_id

    async def write(self, file_id: str, source: IO[bytes] | bytes) -> None:
        await asyncio.to_thread(self._write, file_id, source)

    async def read(self, file_id: str) -> bytes | None:
        """The whole body; None when there is none (deleted)."""
        return await asyncio.to_thread(self._read, file_id)

    async def delete(self, file_id: str) -> None:
        await asyncio.to_thread(self.path(file_id).unlink, True)

    def _write(self, file_id: str, source: IO[bytes] | bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(file_id)
        partial = self.root / f".{file_id}.{uuid.uuid4().hex}.partial"
        with open(partial, "wb") as out:
            if isinstance(source, bytes):
                out.write(source)
            else:
                shutil.copyfileobj(source, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)

    def _read(self, file_id: str) -> bytes | None:
        try:
            return self.path(file_id).read_bytes()
        except FileNotFoundError:
            return None
