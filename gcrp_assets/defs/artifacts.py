"""Artifacts by path, with content-hash data versions and skip-unchanged caching.

Every stage writes under `<root>/<asset>/<fingerprint>/`, where the fingerprint hashes the stage's
code version, its config and its upstream data versions. A finished folder holds `manifest.json`
(written last), so a folder without one is never mistaken for a finished artifact. When the
folder is already finished, the stage reuses it: same files, same data version, no recompute.
The data version is a hash of the fingerprint and the output bytes, so config is folded in.
"""


import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from gcrp_assets.lib.hashing import sha256_json, sha256_tree, short

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"


def code_version(*relative_paths: str) -> str:
    """Hash of the source files a stage runs (relative to the package), as its code version."""
    files = []
    for pattern in relative_paths:
        files.extend(sorted(PACKAGE_ROOT.glob(pattern)))
    digest = sha256_json({f.relative_to(PACKAGE_ROOT).as_posix(): f.read_text("utf-8") for f in files})
    return short(digest, 12)


@dataclass(frozen=True)
class Upstream:
    key: str
    path: Path
    data_version: str


def latest_materialization(instance: dg.DagsterInstance, key: str, partition: str | None = None):
    """The latest AssetMaterialization of `key` (of one partition when given), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None),
        limit=1).records
    return records[0].asset_materialization if records else None


def upstream(context: dg.AssetExecutionContext, key: str, partition: str | None = None) -> Upstream:
    """The latest materialization of an upstream asset (or of one of its partitions): where its artifact is
    and its data version."""
    materialization = latest_materialization(context.instance, key, partition)
    if materialization is None:
        where = f"{key!r} partition {partition!r}" if partition else repr(key)
        raise dg.Failure(f"upstream asset {where} has not been materialized yet: materialize it first "
                         f"(for example `dg launch --assets '+{context.asset_key.to_user_string()}'`)")
    path = Path(str(materialization.metadata["path"].value))
    if not path.exists():
        raise dg.Failure(f"upstream asset {key!r}: its artifact {path} is gone; re-materialize {key}")
    version = materialization.tags.get("dagster/data_version") if materialization.tags else None
    return Upstream(key, path, version or str(materialization.metadata["data_version"].value))


def _encode(value: Any) -> dict:
    if isinstance(value, dg.MetadataValue):
        kind = type(value).__name__
        return {"type": kind, "value": value.value if not isinstance(value, dg.TableMetadataValue) else None}
    if isinstance(value, bool):
        return {"type": "bool", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": value}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    return {"type": "text", "value": str(value)}


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "MarkdownMetadataValue": dg.MetadataValue.md,
    "PathMetadataValue": dg.MetadataValue.path,
    "JsonMetadataValue": dg.MetadataValue.json,
    # Scalars come back as plain Python values, exactly as a fresh build returns them.
    "TextMetadataValue": str,
    "IntMetadataValue": int,
    "FloatMetadataValue": float,
    "BoolMetadataValue": bool,
    "bool": bool,
    "int": int,
    "float": float,
    "text": str,
}


def _decode(encoded: dict) -> Any:
    decoder = _DECODERS.get(encoded["type"])
    return decoder(encoded["value"]) if decoder and encoded["value"] is not None else None


@dataclass(frozen=True)
class Built:
    """What a finished (or reused) stage hands back to its asset."""
    path: Path
    data_version: str
    fingerprint: str
    cached: bool
    metadata: dict[str, Any]

    def result(self, check_results: list[dg.AssetCheckResult] | None = None, **extra: Any) -> dg.MaterializeResult:
        metadata = {
            **self.metadata,
            **extra,
            "path": dg.MetadataValue.path(str(self.path)),
            "data_version": self.data_version,
            "fingerprint": self.fingerprint,
            "cached": self.cached,
        }
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(self.data_version),
                                    check_results=check_results or [])


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    return json.loads(path.read_text("utf-8")) if path.is_file() else None


def write_manifest(folder: Path, fingerprint: str, data_version: str, metadata: dict[str, Any],
                   inputs: dict[str, Any]) -> None:
    manifest = {"fingerprint": fingerprint, "data_version": data_version, "inputs": inputs,
                "metadata": {k: _encode(v) for k, v in metadata.items()}}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False), "utf-8")
    tmp.replace(folder / MANIFEST)


def load_built(folder: Path, manifest: dict) -> Built:
    metadata = {k: v for k, v in ((k, _decode(e)) for k, e in manifest["metadata"].items()) if v is not None}
    return Built(folder, manifest["data_version"], manifest["fingerprint"], True, metadata)


def build_or_reuse(
    context: dg.AssetExecutionContext,
    folder_for: Callable[[str], Path],
    inputs: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    content_globs: tuple[str, ...] = ("*.parquet", "*.md", "*.json"),
    force: bool = False,
) -> Built:
    """Run `build(folder)` unless a finished artifact with the same fingerprint exists.

    `inputs` holds everything the output depends on: code version, config, upstream data versions.
    """
    fingerprint = sha256_json(inputs)
    folder = folder_for(fingerprint)
    manifest = read_manifest(folder)
    if manifest and manifest.get("fingerprint") == fingerprint and not force:
        context.log.info(f"unchanged inputs (fingerprint {short(fingerprint)}): reusing {folder}")
        return load_built(folder, manifest)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    metadata = build(folder)
    content = sha256_tree(folder, content_globs)
    data_version = short(sha256_json({"fingerprint": fingerprint, "content": content}), 24)
    write_manifest(folder, fingerprint, data_version, metadata, inputs)
    return Built(folder, data_version, fingerprint, False, metadata)
