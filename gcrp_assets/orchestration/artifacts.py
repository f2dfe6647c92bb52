"""Artifacts by path, with content-hash data versions and skip-unchanged caching.

Every stage writes under `<root>/<asset>/<fingerprint>/`, where the fingerprint hashes the stage's
code version (every project file its module imports, transitively: `lib.code_closure`), its config and
its upstream data versions. A finished folder holds `manifest.json` (written last, and only when every
blocking check passed), so a folder without one is never mistaken for a finished artifact. When the
folder is already finished, the stage reuses it: same files, same data version, no recompute, and its
checks are computed again from the facts stored in the manifest (never assumed to pass).
The data version is a hash of the fingerprint and the output bytes, so config is folded in.
"""


import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from gcrp_assets.lib.code_closure import code_version as closure_version
from gcrp_assets.lib.hashing import sha256_json, sha256_tree, short

MANIFEST = "manifest.json"
CHECKS_PASSED = "checks_passed"  # metadata of every materialization: did its blocking checks pass?


def code_version(*modules: str) -> str:
    """The code version of an asset defined in (or running) these modules: see `lib.code_closure`."""
    return closure_version(*modules)


@dataclass(frozen=True)
class Upstream:
    key: str
    path: Path
    data_version: str
    metadata: dict[str, Any] = field(default_factory=dict)  # the materialization's metadata, as plain values


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
    passed = materialization.metadata.get(CHECKS_PASSED)
    if passed is not None and not passed.value:
        raise dg.Failure(f"upstream asset {key!r}: its latest materialization failed a blocking check, so its "
                         f"artifact is not used; fix the cause and re-materialize {key}")
    if not path.exists():
        raise dg.Failure(f"upstream asset {key!r}: its artifact {path} is gone; re-materialize {key}")
    version = materialization.tags.get("dagster/data_version") if materialization.tags else None
    plain = {k: v.value for k, v in materialization.metadata.items() if isinstance(v.value, (str, int, float, bool))}
    return Upstream(key, path, version or str(materialization.metadata["data_version"].value), plain)


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
    """What a finished (or reused) stage hands back to its asset, with its check results."""
    path: Path
    data_version: str
    fingerprint: str
    cached: bool
    metadata: dict[str, Any]
    checks: list[dg.AssetCheckResult] = field(default_factory=list)
    checks_passed: bool = True  # every blocking check passed

    def result(self, **extra: Any) -> dg.MaterializeResult:
        metadata = {
            **self.metadata,
            **extra,
            "path": dg.MetadataValue.path(str(self.path)),
            "data_version": self.data_version,
            "fingerprint": self.fingerprint,
            "cached": self.cached,
            CHECKS_PASSED: self.checks_passed,
        }
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(self.data_version),
                                    check_results=self.checks)


Checks = Callable[[dict[str, Any]], list[dg.AssetCheckResult]]


def failed_blocking(context: dg.AssetExecutionContext, results: list[dg.AssetCheckResult]) -> list[str]:
    """Names of the blocking checks (as the asset declares them) that failed."""
    blocking = {spec.name for spec in context.assets_def.check_specs if spec.blocking}
    return sorted(r.check_name for r in results if not r.passed and r.check_name in blocking)


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


def finish(context: dg.AssetExecutionContext, built: Built, checks: Checks, inputs: dict[str, Any] | None) -> Built:
    """`built` with its checks computed from its metadata; for a new artifact (`inputs` given) the manifest is
    written only when every blocking check passed, so a failed artifact is never reused."""
    results = checks(built.metadata)
    failed = failed_blocking(context, results)
    if inputs is not None:
        if failed:
            context.log.error(f"blocking check(s) {', '.join(failed)} failed: {built.path} gets no manifest and "
                              "will not be reused")
        else:
            write_manifest(built.path, built.fingerprint, built.data_version, built.metadata, inputs)
    return Built(built.path, built.data_version, built.fingerprint, built.cached, built.metadata, results, not failed)


def reuse(context: dg.AssetExecutionContext, folder: Path, fingerprint: str, checks: Checks) -> Built | None:
    """The finished artifact in `folder` for this fingerprint, its checks computed again from the stored facts;
    None when there is none, or when it no longer passes them (then it is rebuilt)."""
    manifest = read_manifest(folder)
    if not manifest or manifest.get("fingerprint") != fingerprint:
        return None
    built = finish(context, load_built(folder, manifest), checks, None)
    if not built.checks_passed:
        context.log.warning(f"{folder} fails its blocking checks on its stored facts: rebuilding it")
        return None
    context.log.info(f"unchanged inputs (fingerprint {short(fingerprint)}): reusing {folder}")
    return built


def build_or_reuse(
    context: dg.AssetExecutionContext,
    folder_for: Callable[[str], Path],
    inputs: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    checks: Checks = lambda metadata: [],
    content_globs: tuple[str, ...] = ("*.parquet", "*.md", "*.json"),
    force: bool = False,
) -> Built:
    """Run `build(folder)` unless a finished artifact with the same fingerprint exists and passes `checks`.

    `inputs` holds everything the output depends on: code version, config, upstream data versions.
    `checks` turns the stage's metadata (fresh or stored) into its check results.
    """
    fingerprint = sha256_json(inputs)
    folder = folder_for(fingerprint)
    reused = None if force else reuse(context, folder, fingerprint, checks)
    if reused is not None:
        return reused
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    metadata = build(folder)
    content = sha256_tree(folder, content_globs)
    data_version = short(sha256_json({"fingerprint": fingerprint, "content": content}), 24)
    return finish(context, Built(folder, data_version, fingerprint, False, metadata), checks, inputs)
