"""`modelrunner package (--gguf FILE | --safetensors-dir DIR) [...] REF`: a model into the store.

As Docker's CLI does, the artifact is built here (a GGUF: config v0.1 from its header, one layer
per file; a safetensors directory: config v0.2, one layer per file named by its path in the
directory, ``distribution/safetensors.py``) and streamed as a tar to ``POST /models/load``, so
packaging works against a daemon on another machine too.  The tar holds ``blobs/sha256/<hex>``
for every layer and the config, then ``manifest.json``; file contents are streamed, never held in
memory.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelrunner.cli.base import Command, connect, progress_renderer
from modelrunner.cli.progress import follow
from modelrunner.errors import InvalidRequest

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Blob:
    """One entry of the artifact: a file on disk, or bytes built here (config, manifest)."""

    digest: str
    size: int
    path: Path | None = None
    data: bytes | None = None


def file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            size += len(block)
    return f"sha256:{h.hexdigest()}", size


def _header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.mtime = int(time.time())
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = size, 0o666
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def tar_stream(blobs: list[Blob], manifest: bytes) -> Iterator[bytes]:
    """The tar ``docker model package`` sends: blob directories, each blob, ``manifest.json``."""
    yield _header("blobs/", 0, directory=True)
    yield _header("blobs/sha256/", 0, directory=True)
    for blob in blobs:
        yield _header(f"blobs/sha256/{blob.digest.removeprefix('sha256:')}", blob.size)
        if blob.path is None:
            yield blob.data or b""
        else:
            sent = 0
            with blob.path.open("rb") as f:
                while block := f.read(CHUNK):
                    sent += len(block)
                    yield block
            if sent != blob.size:
                raise InvalidRequest(f"{blob.path} changed while it was being packaged")
        yield _padding(blob.size)
    yield _header("manifest.json", len(manifest))
    yield manifest
    yield _padding(len(manifest))
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def build_artifact(
    gguf: Path,
    *,
    licenses: list[Path],
    chat_template: Path | None,
    context_size: int | None,
) -> tuple[list[Blob], bytes]:
    """Hash the files and build config and manifest as Docker's packager does."""
    from modelrunner.distribution import mediatypes as mt
    from modelrunner.distribution.artifact import build_config, build_manifest, layer
    from modelrunner.distribution.digest import sha256_digest
    from modelrunner.distribution.gguf import read_gguf, shard_paths

    for what, path in [("GGUF file", gguf), *[("license", p) for p in licenses]] + (
        [("chat template", chat_template)] if chat_template else []
    ):
        if not path.is_file():
            raise InvalidRequest(f"{what} {str(path)!r} does not exist or is not a file")
    if gguf.suffix.lower() != ".gguf":
        raise InvalidRequest(f"{str(gguf)!r} is not a .gguf file")
    shards = shard_paths(gguf)
    values = read_gguf(shards[0]).config_values()
    if context_size is not None:
        values["context_size"] = context_size
    files = [(mt.GGUF, p) for p in shards] + [(mt.LICENSE, p) for p in licenses]
    if chat_template is not None:
        files.append((mt.CHAT_TEMPLATE, chat_template))
    blobs, layers = [], []
    for kind, path in files:
        digest, size = file_digest(path)
        blobs.append(Blob(digest, size, path=path))
        layers.append(layer(kind, digest, size, path.name, path.stat().st_mtime_ns))
    config = build_config(values, [str(x["digest"]) for x in layers])
    config_digest = sha256_digest(config)
    blobs.append(Blob(config_digest, len(config), data=config))
    return blobs, build_manifest(config_digest, len(config), layers)


def build_dir_artifact(directory: Path, *, context_size: int | None) -> tuple[list[Blob], bytes]:
    """A safetensors model directory as Docker's ``FromDirectory`` packages it."""
    from modelrunner.distribution import mediatypes as mt
    from modelrunner.distribution.artifact import build_config, build_manifest, layer
    from modelrunner.distribution.digest import sha256_digest
    from modelrunner.distribution.safetensors import config_values, scan_dir

    found = scan_dir(directory)
    values = config_values(found)
    if context_size is not None:
        values["context_size"] = context_size
    blobs, layers = [], []
    for f in found:
        digest, size = file_digest(f.path)
        blobs.append(Blob(digest, size, path=f.path))
        layers.append(layer(f.media_type, digest, size, f.relpath, f.path.stat().st_mtime_ns))
    config = build_config(values, [str(x["digest"]) for x in layers])
    config_digest = sha256_digest(config)
    blobs.append(Blob(config_digest, len(config), data=config))
    return blobs, build_manifest(config_digest, len(config), layers, mt.CONFIG_V02)


class Package(Command):
    name = "package"
    help = "Package a GGUF file or a safetensors (MLX) model directory into a model in the store"
    epilog = (
        "examples:\n"
        "  modelrunner package --gguf ./tiny.gguf --license LICENSE --context-size 4096 "
        "me/tiny:v1\n"
        "  modelrunner package --safetensors-dir ./tiny-mlx me/tiny-mlx:v1"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--gguf", type=Path, metavar="FILE", help="weights (llama.cpp)")
        source.add_argument(
            "--safetensors-dir",
            type=Path,
            metavar="DIR",
            help="a model directory: *.safetensors, config.json, tokenizer files (MLX)",
        )
        parser.add_argument(
            "--license", action="append", type=Path, default=[], metavar="FILE", help="repeatable"
        )
        parser.add_argument("--chat-template", type=Path, metavar="FILE", help="Jinja template")
        parser.add_argument("--context-size", type=int, metavar="N", help="default context")
        parser.add_argument("model", metavar="MODEL", help="the tag to give it, e.g. me/tiny:v1")

    def run(self, args: argparse.Namespace) -> int:
        from modelrunner.distribution.reference import parse_reference

        ref = parse_reference(args.model)  # refuse a bad tag before hashing gigabytes
        if args.context_size is not None and not 0 < args.context_size <= 2**31 - 1:
            raise InvalidRequest(
                f"--context-size must be a positive integer, got {args.context_size}"
            )
        if args.safetensors_dir is not None:
            if args.license or args.chat_template:
                raise InvalidRequest(
                    "--license and --chat-template go with --gguf; with --safetensors-dir put "
                    "those files in the directory (every file in it is packaged)"
                )
            blobs, manifest = build_dir_artifact(
                args.safetensors_dir.expanduser(), context_size=args.context_size
            )
        else:
            blobs, manifest = build_artifact(
                args.gguf.expanduser(),
                licenses=[p.expanduser() for p in args.license],
                chat_template=args.chat_template.expanduser() if args.chat_template else None,
                context_size=args.context_size,
            )
        query = urllib.parse.urlencode({"tag": ref.display})
        response = connect(args).request(
            "POST",
            f"/models/load?{query}",
            body=tar_stream(blobs, manifest),
            headers={"Content-Type": "application/x-tar"},
            stream=True,
        )
        follow(response.lines(), progress_renderer(sys.stdout, mode="package"), warn=sys.stderr)
        print(f"Model packaged successfully as {ref.display}", flush=True)
        return 0
