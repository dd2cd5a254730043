"""The local half of the model store: Docker's layout, safe across processes, crash-consistent.

Owns ``models.json``, blobs, manifests and bundles under ``StoreConfig.path``.  Every mutation
runs in a worker thread under ``flock`` on ``<root>/.lock`` (held for that mutation only) and an
``asyncio.Lock`` inside the process, re-reading ``models.json`` first, so a daemon and a CLI or
test process can share one store.  Reads re-read ``models.json`` (small) and never lock: it is
only ever replaced atomically.  A model is listed only once its manifest and every blob are
under their final names; deletion drops the index entry first, then the files, so a crash at
any moment never leaves a model that lists but cannot load.

Transfers (``pull.py``, ``push.py``, ``package.py``, ``archive.py``) build on this class and
``store.py`` puts them together as ``Store``; nothing here imports them, so the dependency runs
one way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import structlog

from ..config import StoreConfig
from ..errors import Conflict, InvalidReference, ModelNotFound, ModelRunnerError, StoreError
from . import mediatypes as mt
from . import stamps
from .artifact import ParsedManifest, config_object, parse_manifest
from .bundle import model_dir
from .digest import is_digest, is_full_hex, is_short_id, sha256_digest
from .gguf import GGUFError, arch_params, read_gguf, trained_context
from .layout import Entry, Index, Layout, StoreLock, atomic_write, os_error, sweep, walk_files
from .model import GCResult, Model, ProgressFn, RemoveResult
from .reference import Reference, parse_reference, try_parse
from .safetensors import arch_params as hf_arch_params
from .safetensors import context_length, read_hf_config

__all__ = ["GCResult", "LocalStore", "Model", "ProgressFn", "RemoveResult"]

log = structlog.get_logger(__name__)
T = TypeVar("T")
MAX_CONFIG_BYTES = 4 << 20


class LocalStore:
    """Models already on disk: reads, tags, removal, gc, and the hooks transfers write through."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.root = Path(config.path).expanduser()
        self.layout = Layout(self.root)
        self._mutex = asyncio.Lock()
        self._cache: dict[str, Model] = {}  # by id, tags empty: manifests never change
        self._client: Any = None  # RegistryClient, made on first use
        self._pulls: dict[str, asyncio.Task[Model]] = {}
        self._blob_locks: dict[str, asyncio.Lock] = {}
        self._active_blobs: dict[str, int] = {}  # digests being written here (nesting count)
        self._pull_slots = asyncio.Semaphore(max(1, config.max_concurrent_pulls))

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the layout when missing; sweep stale ``.incomplete`` and temp files."""
        try:
            await asyncio.to_thread(self.layout.create)
            removed = await asyncio.to_thread(sweep, self.layout, self.config.incomplete_max_age_s)
        except OSError as e:
            raise os_error(e, f"opening the store at {self.root}") from e
        if removed:
            log.info("store.swept", removed=removed, root=str(self.root))

    async def close(self) -> None:
        pulls = list(self._pulls.values())
        for task in pulls:
            task.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def registry(self) -> Any:
        """The shared registry client (``RegistryClient``)."""
        if self._client is None:
            from .registry import RegistryClient

            self._client = RegistryClient(self.config)
        return self._client

    # -- reads -----------------------------------------------------------------------------

    async def list_models(self) -> list[Model]:
        return await asyncio.to_thread(self._list)

    async def get(self, ref: str) -> Model:
        """By tag (normalised), ``sha256:<hex>``, full or 12-hex short id; else ModelNotFound."""
        return await asyncio.to_thread(self._get, ref)

    async def disk_usage(self) -> int:
        """Bytes the store takes on disk (hard links counted once)."""
        return await asyncio.to_thread(self._disk_usage)

    def _index(self) -> Index:
        return Index.load(self.layout.index_path)

    def _list(self) -> list[Model]:
        out = []
        for entry in self._index().models:
            try:
                out.append(self._model(entry))
            except (ModelRunnerError, OSError) as e:  # Docker skips a model it cannot read
                log.warning("store.unreadable_model", model=entry.id, error=str(e))
        return out

    def _get(self, ref: str) -> Model:
        entry, _tag = resolve(self._index(), ref)
        if entry is None:
            raise not_found(ref)
        return self._model(entry)

    def _disk_usage(self) -> int:
        seen: set[tuple[int, int]] = set()
        total = 0
        for p in walk_files(self.root):
            with contextlib.suppress(OSError):
                st = p.lstat()
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512 if st.st_blocks else st.st_size
        return total

    # -- building Model objects ------------------------------------------------------------

    def _model(self, entry: Entry) -> Model:
        base = self._cache.get(entry.id)
        if base is None:
            base = self._build(entry.id)
            self._cache[entry.id] = base
        tags = tuple(entry.tags)
        display = tuple((r.display if (r := try_parse(t)) else t) for t in tags)
        return dataclasses.replace(base, tags=display, store_tags=tags)

    def _build(self, model_id: str) -> Model:
        lay = self.layout
        try:
            raw = lay.manifest(model_id).read_bytes()
        except OSError as e:
            raise StoreError(f"model {model_id} has no readable manifest: {e.strerror}") from e
        parsed = parse_manifest(raw, model_id)
        try:
            cfg_raw = lay.blob(parsed.config.digest).read_bytes()
        except OSError as e:
            raise StoreError(f"model {model_id} has no readable config: {e.strerror}") from e
        config, created = config_object(cfg_raw)
        weights = parsed.of_type(mt.SAFETENSORS)
        if weights and not parsed.of_type(mt.GGUF):
            return self._build_safetensors(model_id, parsed, config, created)
        ggufs = parsed.of_type(mt.GGUF)
        gguf_paths = self._gguf_paths(model_id, [lay.blob(d.digest) for d in ggufs])
        mmproj = parsed.of_type(*mt.MMPROJ_TYPES)
        header = config.get("gguf") if isinstance(config.get("gguf"), dict) else None
        gguf_map = {str(k): str(v) for k, v in (header or {}).items()}
        if not gguf_map and gguf_paths:
            with contextlib.suppress(GGUFError):
                gguf_map = read_gguf(gguf_paths[0]).gguf
        return Model(
            **self._common(model_id, parsed, config, created),
            gguf_paths=tuple(gguf_paths),
            mmproj_path=lay.blob(mmproj[0].digest) if mmproj else None,
            trained_context=trained_context(gguf_map),
            estimated_bytes=sum(d.size for d in ggufs) + sum(d.size for d in mmproj),
            arch_params=arch_params(gguf_map),
            gguf=gguf_map,
        )

    def _common(
        self, model_id: str, parsed: ParsedManifest, config: dict[str, Any], created: int
    ) -> dict[str, Any]:
        """What a model of any format takes from its manifest and config alike."""
        lay = self.layout
        template = parsed.of_type(mt.CHAT_TEMPLATE)
        return {
            "id": model_id,
            "tags": (),
            "store_tags": (),
            "created": created,
            "config": config,
            "chat_template_path": lay.blob(template[0].digest) if template else None,
            "license_paths": tuple(lay.blob(d.digest) for d in parsed.of_type(mt.LICENSE)),
            "size_bytes": parsed.layer_bytes,
            "manifest_path": lay.manifest(model_id),
        }

    def _build_safetensors(
        self, model_id: str, parsed: ParsedManifest, config: dict[str, Any], created: int
    ) -> Model:
        """A safetensors model: its directory built from the layers, its shape from config.json."""
        lay = self.layout
        weights = parsed.of_type(mt.SAFETENSORS)
        directory: Path | None = None
        hf_config: dict[str, Any] = {}
        try:
            directory = model_dir(lay, model_id, parsed)
            hf_config = read_hf_config(directory / "config.json")
        except StoreError as e:  # listed and inspectable all the same; resolve refuses to run it
            log.warning("store.no_model_dir", model=model_id, error=e.message)
        return Model(
            **self._common(model_id, parsed, config, created),
            gguf_paths=(),
            trained_context=context_length(hf_config),
            estimated_bytes=sum(d.size for d in weights),
            arch_params=hf_arch_params(hf_config),
            safetensors_paths=tuple(lay.blob(d.digest) for d in weights),
            model_dir=directory,
        )

    def _gguf_paths(self, model_id: str, blobs: list[Path]) -> list[Path]:
        """One file: the blob itself.  Shards: hard links named as llama.cpp expects them."""
        if len(blobs) <= 1:
            return blobs
        model_dir = self.layout.bundle(model_id) / "model"
        n = len(blobs)
        links = [model_dir / f"model-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
            for blob, link in zip(blobs, links, strict=True):
                if not link.exists():
                    try:
                        os.link(blob, link)
                    except FileExistsError:
                        pass
                    except OSError:
                        os.symlink(blob, link)
        except OSError as e:
            log.warning("store.bundle_failed", model=model_id, error=str(e))
            return blobs
        return links

    # -- mutations -------------------------------------------------------------------------

    async def _mutate(self, fn: Callable[[Index], T]) -> T:
        """Run *fn* on a fresh index under both locks; save the index when *fn* changed it."""
        async with self._mutex:
            return await asyncio.to_thread(self._locked, fn)

    def _locked(self, fn: Callable[[Index], T]) -> T:
        try:
            with StoreLock(self.layout.lock_path):
                index = self._index()
                before = [m.to_json() for m in index.models]
                result = fn(index)
                if [m.to_json() for m in index.models] != before:
                    index.save(self.layout.index_path)
                return result
        except OSError as e:
            raise os_error(e, "updating the store") from e

    async def commit(self, raw_manifest: bytes, parsed: ParsedManifest, tag: str | None) -> Model:
        """Record a model whose blobs are all in place: manifest file, index entry, tag."""
        model_id = sha256_digest(raw_manifest)
        lay = self.layout

        def do(index: Index) -> Entry:
            missing = [d for d in parsed.files if not lay.blob(d).exists()]
            if missing:
                raise StoreError(f"cannot record model {model_id}: blobs missing: {missing}")
            if not lay.manifest(model_id).exists():
                atomic_write(lay.manifest(model_id), raw_manifest)
            return index.add(model_id, parsed.files, tag)

        entry = await self._mutate(do)
        log.info("store.model_committed", model=model_id, tag=tag)
        return await asyncio.to_thread(self._model, entry)

    async def tag(self, src: str, dst: str) -> Model:
        """Give the model *src* resolves to the tag *dst* (taken off any other model)."""
        target = tag_ref(dst)

        def do(index: Index) -> Entry:
            entry, _ = resolve(index, src)
            if entry is None:
                raise not_found(src)
            return index.add(entry.id, entry.files, target.store_name)

        entry = await self._mutate(do)
        return await asyncio.to_thread(self._model, entry)

    async def remove(
        self, ref: str, *, force: bool = False, in_use: Callable[[str], bool] | None = None
    ) -> RemoveResult:
        """Untag; delete the model (and blobs nobody else uses) with its last tag or by id."""
        entry, tag = await asyncio.to_thread(lambda: resolve(self._index(), ref))
        if entry is None:
            raise not_found(ref)
        model_id = entry.id
        if tag is not None and len(entry.tags) > 1:
            return await self._mutate(lambda index: _untag(index, model_id, tag))
        if tag is None and len(entry.tags) > 1 and not force:
            raise Conflict(
                f"unable to delete {ref!r} (must be forced) due to multiple tag references: "
                + ", ".join(entry.tags)
            )
        if in_use is not None and not force and in_use(model_id):
            raise Conflict(
                f"model {ref!r} is in use by a running model; unload it first or force the removal"
            )
        active = frozenset(self._active_blobs)
        return await self._mutate(lambda index: self._delete(index, model_id, active))

    def _delete(self, index: Index, model_id: str, active: frozenset[str]) -> RemoveResult:
        entry = index.find(model_id)
        if entry is None:
            raise not_found(model_id)
        index.models.remove(entry)
        index.save(self.layout.index_path)  # first: a crash from here on leaves orphans only
        keep = index.referenced() | active  # blobs a pull or package here is writing stay
        self._remove_files(model_id, [d for d in entry.files if d not in keep])
        self._cache.pop(model_id, None)
        log.info("store.model_deleted", model=model_id)
        return RemoveResult(tuple(entry.tags), model_id)

    def _remove_files(self, model_id: str | None, blobs: list[str]) -> int:
        freed = 0
        paths = [self.layout.blob(d) for d in blobs]
        if model_id is not None:
            paths.append(self.layout.manifest(model_id))
            shutil.rmtree(self.layout.bundle(model_id), ignore_errors=True)
        for p in paths:
            stamps.forget(p)
            with contextlib.suppress(FileNotFoundError):
                freed += p.stat().st_size
                p.unlink()
        return freed

    async def purge(self) -> None:
        """Delete every model and blob (Docker's ``DELETE /models/purge``)."""

        def do(index: Index) -> None:
            index.models.clear()
            index.save(self.layout.index_path)
            for d in (self.layout.blobs_dir, self.layout.manifests_dir, self.layout.bundles_dir):
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True, exist_ok=True)
            self._cache.clear()

        await self._mutate(do)

    async def gc(self, *, min_age_s: float = 600.0) -> GCResult:
        """Drop index entries whose files are missing; delete blobs and manifests no model
        references (older than *min_age_s*, so another process's pull in progress keeps its
        finished layers), bundles of gone models, and stale ``.incomplete`` files."""
        lay = self.layout
        incomplete_age = self.config.incomplete_max_age_s
        active = frozenset(self._active_blobs)

        def do(index: Index) -> GCResult:
            now = time.time()
            broken = [  # not ours to make (a crash cannot), but a hand-edited or foreign store
                m
                for m in index.models
                if not lay.manifest(m.id).exists() or not all(lay.blob(f).exists() for f in m.files)
            ]
            for m in broken:
                index.models.remove(m)
                self._cache.pop(m.id, None)
                log.warning("store.broken_model_dropped", model=m.id, tags=m.tags)
            referenced = index.referenced() | active
            ids = {m.id for m in index.models}
            blobs = manifests = freed = 0
            incomplete = sweep(lay, incomplete_age)
            for d, keep, is_manifest in (
                (lay.blobs_dir, referenced, False),
                (lay.manifests_dir, ids, True),
            ):
                for p in list(d.iterdir()):
                    digest = f"sha256:{p.name}"
                    if not is_digest(digest) or digest in keep:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        st = p.stat()
                        if now - st.st_mtime < min_age_s:
                            continue
                        p.unlink()
                        freed += st.st_size
                        manifests += is_manifest
                        blobs += not is_manifest
            for p in list(lay.bundles_dir.iterdir()):
                if f"sha256:{p.name}" not in ids:
                    shutil.rmtree(p, ignore_errors=True)
            stamps.sweep_stamps(lay.blobs_dir)
            return GCResult(blobs, manifests, incomplete, freed, len(broken))

        result = await self._mutate(do)
        log.info("store.gc", **dataclasses.asdict(result))
        return result

    # -- what transfers use --------------------------------------------------------------

    async def read_manifest(self, ref: str) -> tuple[Model, bytes]:
        """A local model and its raw manifest bytes (for push and export)."""
        model = await self.get(ref)
        path = self.layout.manifest(model.id)
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except OSError as e:
            raise os_error(e, f"reading {path}") from e
        return model, raw

    def blob_lock(self, digest: str) -> asyncio.Lock:
        return self._blob_locks.setdefault(digest, asyncio.Lock())

    @contextlib.contextmanager
    def writing(self, digest: str) -> Any:
        """Mark *digest* as being written by this process (gc and remove leave it alone)."""
        self._active_blobs[digest] = self._active_blobs.get(digest, 0) + 1
        try:
            yield
        finally:
            left = self._active_blobs.pop(digest) - 1
            if left:
                self._active_blobs[digest] = left


# -- pure helpers on the index -----------------------------------------------------------------


def not_found(ref: str) -> ModelNotFound:
    shown = ref.strip()
    return ModelNotFound(shown)


def tag_ref(text: str) -> Reference:
    ref = parse_reference(text)
    if ref.tag is None:
        raise InvalidReference(f"{text!r} names a digest; a tag is needed here (name:tag)")
    return ref.with_tag(ref.tag) if ref.digest else ref


def _untag(index: Index, model_id: str, tag: str) -> RemoveResult:
    entry = index.find(model_id)
    if entry is None or tag not in entry.tags:
        raise not_found(tag)
    entry.tags.remove(tag)
    return RemoveResult((tag,), None)


def _legacy_name(stored: str) -> str | None:
    """A stored tag in today's form: older stores wrote ``index.docker.io/library/x:t``."""
    r = try_parse(stored)
    if r is None:
        return None
    if r.registry == "docker.io" and r.repository.startswith("library/"):
        r = Reference(r.registry, "ai/" + r.repository.removeprefix("library/"), r.tag, r.digest)
    return r.store_name


def resolve(index: Index, text: str) -> tuple[Entry | None, str | None]:
    """The entry *text* names, and the stored tag it matched (None when matched by id)."""
    s = text.strip()
    if is_digest(s):
        return index.find(s), None
    if is_full_hex(s) and (e := index.find(f"sha256:{s}")) is not None:
        return e, None
    if is_short_id(s):
        for m in index.models:
            if m.id[7:19] == s:
                return m, None
    ref = parse_reference(s)
    if ref.tag is not None:
        wanted = ref.store_name
        for m in index.models:
            for t in m.tags:
                if t == wanted or _legacy_name(t) == wanted:
                    return m, t
    if ref.digest is not None:
        return index.find(ref.digest), None
    if "/" not in s and ":" not in s:  # Docker's partial name: "smollm2" finds ai/smollm2:v2
        for m in index.models:
            for t in m.tags:
                r = try_parse(t)
                if r is not None and r.repository.rsplit("/", 1)[-1] == s:
                    return m, t
    return None, None
