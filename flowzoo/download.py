"""Checksummed file downloads with a rich progress bar."""

from __future__ import annotations

__all__ = ["ALGORITHMS", "download", "sha256_of"]

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


# The checksums a download can be verified with, by the name that messages show.
ALGORITHMS = {"sha256": "SHA-256", "md5": "MD5"}


def download(url: str, destination: Path, checksum: str, *, algorithm: str = "sha256",
             timeout: float = 30.0) -> Path:
    """Download ``url`` to ``destination`` and check its hex ``checksum``.

    The file is written next to its destination and renamed only once complete and
    verified, so an interrupted or corrupt download never looks like a good file.

    Args:
        url: where to download from.
        destination: the file to create.
        checksum: the expected hex digest of the file.
        algorithm: ``"sha256"``, or ``"md5"`` for hosts that publish only an MD5.
        timeout: seconds to wait for the server.

    Raises:
        DataError: the download failed or the checksum does not match.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.new(algorithm)
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
    if digest.hexdigest() != checksum:
        partial.unlink(missing_ok=True)
        raise DataError(f"downloaded {url} but its {ALGORITHMS[algorithm]} is {digest.hexdigest()}, "
                        f"expected {checksum}")
    os.replace(partial, destination)
    return destination
