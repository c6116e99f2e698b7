"""sha256 of model files: one file, and a set of named files as one model identity.

The set encoding (``hash_files``) is the model hash stored with every result: for each file,
in the order given, ``len(name)`` (8 bytes big-endian), the name (UTF-8), ``len(content)``
(8 bytes big-endian) and the content. Length prefixes make the encoding unambiguous.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

#: Read size, bytes (1 MiB).
BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, 64 lowercase hex digits.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def hash_files(files: Iterable[tuple[str, Path]]) -> tuple[dict[str, str], str]:
    """Each file's sha256 and the combined sha256 of ``(name, path)`` pairs, in the order given.

    Returns:
        ({name: hex sha256 of its content}, combined hex sha256 in the encoding above).

    Raises:
        OSError: a file cannot be read (``filename`` names it).
    """
    combined = hashlib.sha256()
    each: dict[str, str] = {}
    for name, path in files:
        digest = hashlib.sha256()
        encoded = name.encode("utf-8")
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            combined.update(len(encoded).to_bytes(8, "big") + encoded + size.to_bytes(8, "big"))
            while block := fh.read(BLOCK):
                digest.update(block)
                combined.update(block)
        each[name] = digest.hexdigest()
    return each, combined.hexdigest()


__all__ = ["BLOCK", "hash_files", "sha256_file"]
