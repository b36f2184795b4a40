"""Safe extraction of a .tar.gz dataset archive.

Every member is checked before anything is written: only regular files and directories
under one expected top-level folder are accepted; absolute paths, ``..`` components,
links and device files are refused. Files are extracted into a temp folder inside the
destination and the top-level folder is then renamed into place, so a failed extraction
leaves nothing that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from gpucnn.errors import DataError


def _check_member(archive: Path, member: tarfile.TarInfo, top: str) -> PurePosixPath:
    """The member's relative path, or DataError when it is unsafe or outside ``top``."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"archive {archive}: refusing member {name!r} with an absolute path")
    if ".." in path.parts or "\\" in name:
        raise DataError(f"archive {archive}: refusing member {name!r} that points outside the extraction folder")
    if member.issym() or member.islnk():
        raise DataError(f"archive {archive}: refusing link member {name!r} -> {member.linkname!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"archive {archive}: refusing member {name!r}: not a regular file or directory")
    parts = [p for p in path.parts if p != "."]
    if not parts or parts[0] != top:
        raise DataError(f"archive {archive}: unexpected member {name!r}; expected everything under {top}/")
    return PurePosixPath(*parts)


def extract_tar(archive: str | os.PathLike, dest_dir: str | os.PathLike, top: str) -> Path:
    """Extract ``archive`` whose members all lie under ``top/`` into ``dest_dir/top``; return that path.

    Raises DataError for an unreadable/truncated archive or an unsafe member.
    An existing ``dest_dir/top`` is left untouched (DataError if it exists).
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    final = dest_dir / top
    if final.exists():
        raise DataError(f"cannot extract {archive}: {final} already exists")
    dest_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=f".{top}.extract-"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                relative = [_check_member(archive, m, top) for m in members]
                for member, rel in zip(members, relative):
                    target = staging.joinpath(*rel.parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DataError(
                f"archive {archive} is unreadable or truncated ({exc}); delete it to download again"
            ) from exc
        extracted = staging / top
        if not extracted.is_dir():
            raise DataError(f"archive {archive} contains no {top}/ folder")
        os.replace(extracted, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def ensure_extracted(root: Path, folder: str, archive_name: str, url: str, md5: str, what: str, download: bool,
                     progress: bool, timeout: float, deadline: float) -> Path:
    """``root/folder``, downloading (md5-verified) and extracting ``archive_name`` first when missing.

    ``what`` names the dataset in errors. With ``download`` False, a missing folder and archive
    is a DataError saying where they were looked for.
    """
    from gpucnn.data.download import fetch_verified, offline_hint
    from gpucnn.data.files import make_dir

    target = root / folder
    if target.is_dir():
        return target
    if not download and not (root / archive_name).is_file():
        raise DataError(f"{what} is not in {root} (expected {folder}/ or {archive_name}) and download is "
                        "disabled; enable download or point --data-dir at a copy")
    make_dir(root)
    archive = fetch_verified(root / archive_name, url, md5, progress=progress, timeout=timeout, deadline=deadline,
                             hint=offline_hint(f"{archive_name} or its extracted {folder}/"))
    extract_tar(archive, root, folder)
    return target
