"""``mirrord fs cat|ls|stat PATH``: look at the target's file system."""

from __future__ import annotations

import argparse
import stat
import sys
from typing import Any

from mirrord_core.cli.target_options import command_parser, run_with_session
from mirrord_core.config import ResolvedConfig
from mirrord_core.plugin_manager import LoadedPlugins
from mirrord_core.session import Session
from mirrord_core.user_errors import UserError
from mirrord_fs.local.remote_files import RemoteFiles

_TYPES = {stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFREG: "-"}


class RemotePathError(UserError):
    """A file operation failed in the target."""


def add_fs_command(commands: Any) -> None:
    parser = commands.add_parser(
        "fs", help="read the target's files", description="Read the target's file system."
    )
    actions = parser.add_subparsers(dest="fs_action", metavar="ACTION", required=True)
    for name, help_text in (
        ("cat", "print a file of the target"),
        ("ls", "list a directory of the target"),
        ("stat", "show a path's metadata in the target"),
    ):
        action = command_parser(actions, name, help=help_text)
        action.add_argument("path", metavar="PATH", help="absolute path in the target")
        action.set_defaults(handler=_fs)


async def _cat(files: RemoteFiles, path: str) -> None:
    async for chunk in files.stream_file(path):
        sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


async def _ls(files: RemoteFiles, path: str) -> None:
    for name, _inode, file_type in sorted(await files.readdir(path)):
        print(f"{_TYPES.get(file_type, '?')} {name}")


async def _stat(files: RemoteFiles, path: str) -> None:
    result = await files.stat(path, follow_symlinks=False)
    print(f"path: {path}")
    print(f"mode: {stat.filemode(result.mode)} ({result.mode & 0o7777:o})")
    print(f"size: {result.size}")
    print(f"owner: {result.uid}:{result.gid}")
    print(f"inode: {result.ino}, links: {result.nlink}")


def _fs(args: argparse.Namespace) -> int:
    action = {"cat": _cat, "ls": _ls, "stat": _stat}[args.fs_action]
    if not args.path.startswith("/"):
        raise RemotePathError(f"{args.path}: give an absolute path in the target")

    async def work(session: Session, resolved: ResolvedConfig, loaded: LoadedPlugins) -> int:
        try:
            await action(RemoteFiles(session), args.path)
        except OSError as err:
            raise RemotePathError(f"{args.path}: {err.strerror or err} (in the target)") from None
        return 0

    return run_with_session(args, work)
