"""A Request whose multipart file parts stream straight into the storage's local staging
file, instead of a temporary copy that would then be copied again."""

from __future__ import annotations

from typing import IO, Any

from flask import Request, current_app


class UploadRequest(Request):
    """Flask request class; file parts go to storage.staging_file()."""

    staged: list[Any]

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None,
                         content_length: int | None = None) -> IO[bytes]:
        storage = current_app.extensions["tabserve"].storage
        path, fh = storage.staging_file()
        if not hasattr(self, "staged"):
            self.staged = []
        self.staged.append(path)
        return fh
