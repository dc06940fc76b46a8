"""The model digest, moved to `respublica.api.model_digest` (the operator and the CLI compute it too).

Re-exported here so the engine's modules keep importing it from `respublica.serving.engine.digest`.
"""

from respublica.api.model_digest import (
    MISMATCH_EXIT_CODE,
    MISMATCH_PREFIX,
    DigestMismatch,
    FileEntry,
    combine,
    entries,
    file_sha256,
    mismatch_message,
    model_digest,
    model_files,
    parse_mismatch,
    total_bytes,
    verify,
)

__all__ = [
    "MISMATCH_EXIT_CODE",
    "MISMATCH_PREFIX",
    "DigestMismatch",
    "FileEntry",
    "combine",
    "entries",
    "file_sha256",
    "mismatch_message",
    "model_digest",
    "model_files",
    "parse_mismatch",
    "total_bytes",
    "verify",
]
