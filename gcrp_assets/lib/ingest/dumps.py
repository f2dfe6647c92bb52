"""Dumps in the inbox: found, fingerprinted, their layout recognised by content, read as one stream.

A dump is read the same way whatever it happens to be called (`detect_layout`):

- `canonical_jsonl`: the native format (`canonical`);
- `post_table`: CSV, TSV or Parquet, one row per post (`post_tables`);
- `sillytavern`: a SillyTavern data folder, or one chat `.jsonl` (`sillytavern`).

`iter_dump` yields ("thread", row) / ("reject", row) in dump order; each reject names the file and the
line (or row). A dump that cannot be read at all raises `DumpReadError`, naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from gcrp_assets.lib.hashing import sha256_file, sha256_tree
from gcrp_assets.lib.ingest.canonical import collect, iter_canonical_jsonl
from gcrp_assets.lib.ingest.contract import DumpContents, DumpReadError, dump_name
from gcrp_assets.lib.ingest.lines import JsonLineError, first_line, parse_json_line


CANONICAL_SUFFIXES = (".jsonl", ".jsonl.gz")


TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet")


DUMP_SUFFIXES = CANONICAL_SUFFIXES + TABLE_SUFFIXES


LAYOUTS = ("canonical_jsonl", "post_table", "sillytavern")


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__pycache__"


def find_dumps(inbox: Path, on_refused: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Every dump in the inbox, by name: files of a known kind, and folders (one SillyTavern export each).

    Files of other kinds (notes, READMEs) are not dumps and are left alone; hidden entries are
    editor or OS litter. A folder that turns out not to be an export fails when it is read, rather
    than being skipped without a word. An entry that is a symbolic link leading outside the inbox, or
    whose name is not a safe partition key (`inbox.validate_dump_name`: a control character), or a folder
    with such a link anywhere inside it, is not a dump either: it is left out and, with `on_refused`,
    reported as (path, reason). Reading checks the same again (`inbox.resolve_dump`, `dump_digest`).
    """
    from gcrp_assets.lib.ingest.inbox import (InboxError, check_inside, inbox_root, outside_link,
                                              validate_dump_name)

    if not inbox.is_dir():
        raise DumpReadError(f"{inbox}: inbox folder does not exist")
    root = inbox_root(inbox)
    found = []
    for path in inbox.iterdir():
        if _is_hidden(path) or not (path.is_dir() or (path.is_file() and path.name.lower().endswith(DUMP_SUFFIXES))):
            continue
        try:
            validate_dump_name(path.name)
            if path.is_symlink() and outside_link(path, root):
                raise InboxError(f"dump {path.name!r} is a symbolic link to a place outside the inbox; refused")
            if path.is_dir():
                check_inside(path, root)
        except InboxError as exc:
            if on_refused is not None:
                on_refused(path, str(exc))
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.name)


def dump_digest(path: Path, inbox: Path | None = None) -> str:
    """The dump's content fingerprint: sha256 of the file, or of every file in the folder.

    A folder is hashed over its files' relative names and contents in sorted order, so renaming,
    adding or editing any file inside an export changes the fingerprint. For a file it equals the
    plain sha256 of its bytes, so fingerprints taken before importers existed stay valid.

    Nothing outside `inbox` (default: the folder the dump sits in) is read: a dump that is, or a folder
    that holds, a symbolic link resolving outside it raises `DumpReadError` naming it.
    """
    from gcrp_assets.lib.ingest.inbox import InboxError, inbox_root, outside_link

    try:
        root = inbox_root(inbox if inbox is not None else path.absolute().parent)
        if outside_link(path, root):
            raise InboxError(f"dump {path.name!r} is a symbolic link to a place outside the inbox; refused")
        if path.is_dir():
            return sha256_tree(path, inside=root)
        return sha256_file(path)
    except (InboxError, ValueError) as exc:
        raise DumpReadError(f"{path.name}: {exc}") from exc
    except OSError as exc:
        raise DumpReadError(f"{path.name}: cannot read dump: {exc.strerror or type(exc).__name__}") from exc


_PARQUET_MAGIC = b"PAR1"


def detect_layout(path: Path) -> str:
    """Which importer reads `path`: "canonical_jsonl", "post_table" or "sillytavern".

    Content decides, the name only breaks ties: a SillyTavern chat saved as `.jsonl` must not be
    read as canonical threads (every line would be rejected), and a table with an unexpected
    extension is still a table. Raises `DumpReadError` when nothing fits. Reads at most one line of
    MAX_RECORD_BYTES (`first_line`); a first line too long to sniff leaves the decision to the name.
    """
    # Importers build on the primitives above, so they are imported when used (no import cycle).
    from gcrp_assets.lib.ingest import post_tables, sillytavern

    if path.is_dir():
        if sillytavern.looks_like_export(path):
            return "sillytavern"
        raise DumpReadError(f"{path.name}: folder is not a SillyTavern export "
                            "(no chat .jsonl, groups/*.json or character cards in it)")
    name = path.name.lower()
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise DumpReadError(f"{path.name}: cannot read dump: {exc.strerror or type(exc).__name__}") from exc
    if magic == _PARQUET_MAGIC or name.endswith(".parquet"):
        return "post_table"
    first = first_line(path)
    if first is not None and first.lstrip().startswith(b"{"):
        try:
            record = parse_json_line(first)
        except JsonLineError:
            record = None
        if isinstance(record, dict):
            if sillytavern.is_chat_record(record) and not ("thread_id" in record or "posts" in record):
                return "sillytavern"
            return "canonical_jsonl"
    if first is not None and post_tables.header_delimiter(first.decode("utf-8-sig", "replace")):
        return "post_table"
    if name.endswith(CANONICAL_SUFFIXES):
        return "canonical_jsonl"  # its reader reports what is wrong, with the line
    if name.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        return "post_table"  # its reader reports the missing columns
    raise DumpReadError(f"{path.name}: unrecognised dump layout (expected canonical thread JSONL, a CSV/TSV/Parquet "
                        "post table, or a SillyTavern export)")


class DumpReader:
    """One dump read as a stream: iterate it for ("thread", row) and ("reject", row) in dump order, each
    row as `DumpContents.threads` / `.rejects` hold them; `stats` (a DumpContents whose lists stay empty)
    has the counters (`lines`, `rows`, `ooc_rows`, `system_messages`, `layout`), final once iterated.

    Memory per layout: canonical JSONL, one line at a time (plus the thread_ids seen); post tables, two
    passes over the rows, holding only the rows of threads not yet complete (one thread at a time when
    a thread's rows are contiguous, as in forum dumps; see `post_tables`); SillyTavern, one
    chat at a time (cards and groups, which every chat may refer to, are held).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.layout = detect_layout(self.path)
        self.stats = DumpContents(dump_name(self.path), layout=self.layout)

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        from gcrp_assets.lib.ingest import post_tables, sillytavern

        if self.layout == "post_table":
            return post_tables.iter_post_table(self.path, self.stats)
        if self.layout == "sillytavern":
            return sillytavern.iter_sillytavern(self.path, self.stats)
        return iter_canonical_jsonl(self.path, self.stats)


def iter_dump(path: Path) -> DumpReader:
    """The streaming reader of one dump, whatever its layout (see `DumpReader`)."""
    return DumpReader(path)


def read_dump(path: Path) -> DumpContents:
    """The threads and rejects of one dump, whatever its layout, in memory (`iter_dump` streams)."""
    reader = iter_dump(path)
    return collect(iter(reader), reader.stats)
