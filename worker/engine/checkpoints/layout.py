"""Which files of a checkpoint hold its weights: one rule for local directories and Hub repos.

`select_weights` is a pure function over the repo-relative file names (POSIX paths,
"unet/config.json") plus a callback that reads a small JSON file; LocalSource and
HubSource both call it, so a folder means the same checkpoint on disk and on the Hub.

The rule, within the chosen folder (the top level, or `subfolder`):

1. `file` given: exactly that file, relative to the folder: a `*.safetensors` file,
   or a safetensors index (`*.safetensors.index.json`, `*.safetensors.index.<variant>.json`)
   whose shards are then read. Variants, `consolidated*.safetensors` and adapters
   (`adapter_model.safetensors`) are read only this way.
2. else `model.safetensors.index.json` and the shards its weight_map names;
3. else `model.safetensors`;
4. else the one other index `*.safetensors.index.json` that is not a variant
   (e.g. `diffusion_pytorch_model.safetensors.index.json`), when there is exactly one;
5. else the one other `*.safetensors` that is not a variant, a shard or an adapter
   (e.g. `diffusion_pytorch_model.safetensors`), when there is exactly one;
6. else refused (`no_safetensors`): other safetensors files present (variants, several
   candidates) -> the message names them and asks for `file`; none in the folder but
   some in its subfolders -> the message lists the subfolders and asks for `subfolder`;
   only pickles (`.bin`, `.pt`, ...) -> refused as unsafe, never read.

Pickles beside safetensors are ignored. A variant is a file whose stem ends in a dtype or
EMA tag (`model.fp16.safetensors`, `model.fp16-00001-of-00002.safetensors`,
`model_bf16.safetensors`, `*.ema.safetensors`) or starts with `consolidated`.
An index's weight_map must be a non-empty {tensor name: shard file} dict of strings naming
safetensors files that exist beside the index; anything else is `malformed`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from pathlib import PurePosixPath

from worker.engine.errors import EngineError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS = ".safetensors"

_INDEX = re.compile(r"\.safetensors\.index(?:\.[\w-]+)?\.json$")
_SHARD = re.compile(r"-\d{3,6}-of-\d{3,6}$")
_VARIANT = re.compile(
    r"(?:^|[._-])(?:fp16|fp32|bf16|fp8|f16|f32|float16|float32|bfloat16|half|int8|int4|"
    r"ema|noema|non_ema|nonema|emaonly)$",
    re.IGNORECASE,
)
# A path component a user may name: letters, digits, '_', '-', '.', not starting with '.'.
_COMPONENT = re.compile(r"^[\w\-][\w\-.]{0,199}$")
# How many names a refusal lists before "...".
_SHOWN = 6


def is_index(name: str) -> bool:
    return bool(_INDEX.search(name))


def is_variant(name: str) -> bool:
    """A dtype/EMA variant or a consolidated (non-HF) export: read only when named by `file`."""
    base = PurePosixPath(name).name
    if base.startswith("consolidated"):
        return True
    if base.endswith(SAFETENSORS):
        stem = base[: -len(SAFETENSORS)]
    elif base.endswith(".safetensors.index.json"):
        stem = base[: -len(".safetensors.index.json")]
    else:
        return False
    return bool(_VARIANT.search(_SHARD.sub("", stem)))


def check_relative(value: str | None, what: str) -> str | None:
    """A user-given subfolder or file: relative, no '..', sane characters; None/'' -> None."""
    if value is None:
        return None
    text = value.strip().strip("/") if what == "subfolder" else value.strip()
    if not text:
        return None
    parts = text.split("/")
    if len(text) > 300 or value.strip().startswith("/") or not all(_COMPONENT.match(p) for p in parts):
        raise EngineError(
            "bad_id",
            f"{what} {value!r} is not a valid path inside a checkpoint: give a relative path such as "
            f"{'unet' if what == 'subfolder' else 'model.safetensors'} (letters, digits, '-', '_', '.', '/'; "
            "no '..', no leading '/').",
        )
    if what == "file" and not (text.endswith(SAFETENSORS) or is_index(text)):
        raise EngineError(
            "bad_id",
            f"file {value!r} is not a safetensors file: name a *.safetensors file or a "
            "*.safetensors.index.json index (Subnetscope never loads pickle weights).",
        )
    return text


def select_weights(
    names: Collection[str],
    read_json: Callable[[str], object],
    *,
    where: str,
    subfolder: str | None = None,
    file: str | None = None,
) -> list[str]:
    """The repo-relative safetensors files holding the checkpoint's weights (sorted).

    `names`: every file of the checkpoint (repo-relative POSIX paths; a local lister may
    stop two levels below the folder). `read_json(path)` returns a small JSON file's
    content (raising EngineError("malformed") when it is not JSON). `where` names the
    checkpoint in messages. Raises EngineError (`not_found`, `no_safetensors`, `malformed`).
    """
    names = set(names)
    folder = subfolder.strip("/") if subfolder else ""
    prefix = f"{folder}/" if folder else ""
    shown_folder = f"{folder}/" if folder else "its top level"
    if folder and not any(n.startswith(prefix) for n in names):
        raise EngineError("not_found", f"{where} has no subfolder {folder}/.")

    if file:
        path = prefix + file
        if path not in names:
            raise EngineError("not_found", f"{where} has no file {path}.")
        return _index_shards(path, names, read_json, where) if is_index(path) else [path]

    here = {n[len(prefix):] for n in names if n.startswith(prefix) and "/" not in n[len(prefix):]}
    if INDEX_FILE in here:
        return _index_shards(prefix + INDEX_FILE, names, read_json, where)
    if SINGLE_FILE in here:
        return [prefix + SINGLE_FILE]
    indexes = sorted(n for n in here if n.endswith(".safetensors.index.json") and not is_variant(n))
    if len(indexes) == 1:
        return _index_shards(prefix + indexes[0], names, read_json, where)
    singles = sorted(
        n for n in here
        if n.endswith(SAFETENSORS) and not is_variant(n) and n != ADAPTER_FILE and not _SHARD.search(n[: -len(SAFETENSORS)])
    )
    if len(singles) == 1 and not indexes:
        return [prefix + singles[0]]

    others = sorted(n for n in here if n.endswith(SAFETENSORS) or is_index(n))
    below = _weight_folders(names, prefix)
    if others:
        hint = f" Other folders with weights: {_listing(below)}." if below else ""
        what = "an adapter" if others == [ADAPTER_FILE] else "safetensors files"
        raise EngineError(
            "no_safetensors",
            f"{where} has no model.safetensors or model.safetensors.index.json in {shown_folder}, only "
            f"{what} Subnetscope does not pick by itself ({_listing(others)}); pass file=... naming the "
            f"one to read (e.g. file={others[0]}).{hint}",
        )
    if below:
        raise EngineError(
            "no_safetensors",
            f"{where} has no safetensors weights in {shown_folder}; weights are in subfolders: "
            f"{_listing(below)} - pass subfolder=... (e.g. subfolder={prefix}{below[0].rstrip('/')}).",
        )
    ggufs = sorted(n for n in here if n.endswith(".gguf"))
    if ggufs:
        raise EngineError(
            "unsupported_format",
            f"{where} has only GGUF weights ({_listing(ggufs, 3)}): llama.cpp's packed quantized format is not "
            "supported (nor GPTQ or AWQ). Compare the safetensors checkpoints the GGUF files were made from.",
        )
    pickles = sorted(n for n in here if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise EngineError(
            "no_safetensors",
            f"{where} has only pickle weights ({_listing(pickles, 3)}); Subnetscope never loads pickle files "
            "because they can run code. Pick a revision with safetensors weights, or convert it.",
        )
    raise EngineError("no_safetensors", f"{where} contains no safetensors weights (*.safetensors) in {shown_folder}.")


def _index_shards(index: str, names: set[str], read_json: Callable[[str], object], where: str) -> list[str]:
    """The shard files an index names, as repo-relative paths beside the index."""
    content = read_json(index)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise EngineError("malformed", f"{where}: {index} is not a valid index (no weight_map of tensor -> file).")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise EngineError("malformed", f"{where}: {index} is not a valid index (weight_map values must be file names).")
    folder = PurePosixPath(index).parent.as_posix()
    prefix = "" if folder == "." else f"{folder}/"
    shards = []
    for shard in sorted(set(weight_map.values())):
        parts = shard.split("/")
        if shard.startswith("/") or not all(_COMPONENT.match(p) for p in parts) or not shard.endswith(SAFETENSORS):
            raise EngineError("malformed", f"{where}: {index} names {shard!r}, which is not a safetensors file beside it.")
        if prefix + shard not in names:
            raise EngineError("malformed", f"{where}: shard {shard} listed in {index} is missing.")
        shards.append(prefix + shard)
    return shards


def _weight_folders(names: set[str], prefix: str) -> list[str]:
    """Subfolders (one or two levels below the folder) that hold safetensors files, as 'unet/'."""
    found = set()
    for name in names:
        if not name.startswith(prefix) or not name.endswith(SAFETENSORS):
            continue
        parts = name[len(prefix):].split("/")
        if 2 <= len(parts) <= 3:
            found.add("/".join(parts[:-1]) + "/")
    return sorted(found)


def _listing(items: list[str], limit: int = _SHOWN) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
