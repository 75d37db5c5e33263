"""Checksummed file downloads with a rich progress bar."""

from __future__ import annotations

__all__ = ["download", "sha256_of"]

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from flowzoo.errors import DataError


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, destination: Path, sha256: str, *, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``destination`` and check its SHA-256.

    The file is written next to its destination and renamed only once complete and
    verified, so an interrupted or corrupt download never looks like a good file.

    Raises:
        DataError: the download failed or the checksum does not match.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as file:
            total = int(response.headers.get("Content-Length") or 0) or None
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(f"downloading {destination.name}", total=total)
                while block := response.read(1 << 20):
                    file.write(block)
                    digest.update(block)
                    progress.advance(task, len(block))
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise DataError(f"could not download {url}: {reason}") from error
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise DataError(f"downloaded {url} but its SHA-256 is {digest.hexdigest()}, expected {sha256}")
    os.replace(partial, destination)
    return destination
