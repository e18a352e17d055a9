"""A PEFT LoRA adapter's settings and where it is: adapter_config.json parsed and checked,
the adapter file found in a checkpoint, and the base it names (docs/METRICS.md, "Pairing tensors").

`lora.py` merges an adapter onto its base with these settings; anything adapter_config.json
turns on that the merge does not compute is refused here, named (`unsupported_adapter`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from worker.engine.checkpoints.layout import ADAPTER_FILE, INDEX_FILE, SINGLE_FILE
from worker.engine.checkpoints.sources import Source
from worker.engine.checkpoints.spec import SourceSpec, parse_source
from worker.engine.errors import EngineError

ADAPTER_CONFIG = "adapter_config.json"

# LoraConfig fields that turn on something the merge above does not compute; a value other than
# these "off" values is refused, named.
_UNSUPPORTED_FIELDS = {
    "use_dora": (None, False),
    "layer_replication": (None, [], {}),
    "use_qalora": (None, False),
    "use_bdlora": (None, False, {}),
    "alora_invocation_tokens": (None, []),
    "arrow_config": (None, {}),
    "velora_config": (None, {}),
    "monteclora_config": (None, {}),
    "kasa_config": (None, {}),
    "megatron_config": (None, {}),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, [], {}),
}
# init_lora_weights values whose initialisation rewrites the base weights (PiSSA, OLoRA, CorDA,
# LoftQ, LoRA-GA) or that select a LoRA variant (MiCA): the adapter is not W + s*B@A on the base.
_BASE_MUTATING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")


def unsupported(where: str, what: str) -> EngineError:
    return EngineError(
        "unsupported_adapter",
        f"{where} is a PEFT adapter Subnetscope cannot merge exactly: {what}. Supported: plain LoRA "
        "(peft_type LORA) on linear, GPT-2 Conv1D and embedding layers, with modules_to_save; merge it "
        "yourself (merge_and_unload) and compare the merged model instead.",
    )


@dataclass(frozen=True)
class LoraSettings:
    """The fields of adapter_config.json the merge depends on."""

    r: int
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: dict
    alpha_pattern: dict
    target_modules: list | str | None
    modules_to_save: list | None
    bias: str
    lora_bias: bool
    base_model_name_or_path: str | None
    base_revision: str | None
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def label(self) -> str:
        """'LoRA r=8, alpha=16' (plus rsLoRA / per-module ranks when they apply)."""
        extra = ", rsLoRA" if self.use_rslora else ""
        if self.rank_pattern or self.alpha_pattern:
            extra += ", per-module r/alpha"
        return f"LoRA r={self.r}, alpha={_number(self.lora_alpha)}{extra}"

    def rank_and_alpha(self, module: str) -> tuple[int, float]:
        """r and alpha of one module, by `peft.utils.other.get_pattern_key` (first pattern that matches)."""
        r = self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.lora_alpha)
        return r, alpha

    def scaling(self, module: str) -> tuple[int, float]:
        r, alpha = self.rank_and_alpha(module)
        # The exact Python expressions of LoraLayer.update_layer.
        return r, (alpha / math.sqrt(r) if self.use_rslora else alpha / r)

    def describe(self) -> dict:
        out = {
            "type": "LORA",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora,
            "target_modules": self.target_modules,  # a sorted list, or PEFT's string form ("all-linear", a regex)
            "modules_to_save": sorted(self.modules_to_save) if self.modules_to_save else None,
            "base_model_name_or_path": self.base_model_name_or_path,
            "label": self.label,
        }
        if self.rank_pattern:
            out["rank_pattern"] = dict(self.rank_pattern)
        if self.alpha_pattern:
            out["alpha_pattern"] = dict(self.alpha_pattern)
        return out


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _pattern_key(patterns: dict, key: str) -> str:
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key


def parse_adapter_config(raw: object, where: str) -> LoraSettings:
    """adapter_config.json -> LoraSettings; other PEFT methods and LoRA extensions are refused."""
    if not isinstance(raw, dict):
        raise EngineError("malformed", f"{where}: {ADAPTER_CONFIG} is not a JSON object.")
    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise unsupported(where, f"peft_type {peft_type!r} (only LORA adapters are merged)")
    refused = [f"{k}={json.dumps(raw[k])[:40]}" for k, off in _UNSUPPORTED_FIELDS.items()
               if k in raw and raw[k] not in off]
    init = raw.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_MUTATING_INITS):
        refused.append(f"init_lora_weights={init!r} (it rewrites the base weights; save the adapter with "
                       "path_initial_model_for_weight_conversion to get a plain LoRA)")
    if refused:
        raise unsupported(where, ", ".join(refused))
    bias = raw.get("bias", "none") or "none"
    if bias not in ("none", "all", "lora_only"):
        raise unsupported(where, f"bias={bias!r}")
    r, alpha = raw.get("r", 8), raw.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = raw.get("rank_pattern") or {}, raw.get("alpha_pattern") or {}
    numbers_ok = (
        _is_int(r) and r > 0 and _is_number(alpha)
        and isinstance(rank_pattern, dict) and all(_is_int(v) and v > 0 for v in rank_pattern.values())
        and isinstance(alpha_pattern, dict) and all(_is_number(v) for v in alpha_pattern.values())
    )
    if not numbers_ok:
        raise EngineError("malformed", f"{where}: {ADAPTER_CONFIG} has an invalid r, lora_alpha, rank_pattern "
                                       "or alpha_pattern.")
    base = raw.get("base_model_name_or_path")
    revision = raw.get("revision")
    targets = raw.get("target_modules")
    return LoraSettings(
        r=r, lora_alpha=alpha, use_rslora=bool(raw.get("use_rslora", False)),
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        rank_pattern=dict(rank_pattern), alpha_pattern=dict(alpha_pattern),
        target_modules=sorted(targets) if isinstance(targets, (list, tuple, set)) else targets,
        modules_to_save=list(raw.get("modules_to_save") or []) or None,
        bias=bias, lora_bias=bool(raw.get("lora_bias", False)),
        base_model_name_or_path=base if isinstance(base, str) and base.strip() else None,
        base_revision=revision if isinstance(revision, str) and revision.strip() else None,
        raw=raw,
    )


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --- finding an adapter and its base ------------------------------------------------------------


def _folder_of(spec: SourceSpec) -> str:
    """The repo-relative folder holding the adapter files ('' for the top level)."""
    parts = [p for p in (spec.subfolder, str(PurePosixPath(spec.file).parent) if spec.file else None) if p and p != "."]
    return "/".join(parts)


def local_adapter_spec(spec: SourceSpec) -> SourceSpec | None:
    """For a local directory holding an adapter (and no model weights), the spec naming its file."""
    if spec.kind != "local":
        return None
    folder = Path(spec.id) / _folder_of(spec)
    if spec.file:
        named = PurePosixPath(spec.file).name == ADAPTER_FILE and (folder / ADAPTER_CONFIG).is_file()
        return spec if named else None
    if not ((folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_FILE).is_file()):
        return None
    if (folder / SINGLE_FILE).is_file() or (folder / INDEX_FILE).is_file():
        return None  # a full model beside its adapter: the model is what the user pointed at
    return replace(spec, file=ADAPTER_FILE)


def read_adapter_config(source: Source, spec: SourceSpec) -> tuple[object, str]:
    """adapter_config.json beside the adapter file of an opened source, and a digest of its bytes."""
    rel = "/".join(p for p in (_folder_of(spec), ADAPTER_CONFIG) if p)
    directory = getattr(source, "directory", None) or getattr(getattr(source, "_local", None), "directory", None)
    where = spec.label
    if directory is not None:
        path = Path(directory) / rel
        try:
            data = path.read_bytes()
        except OSError:
            raise EngineError("not_found", f"{where} has no {rel} beside its adapter weights.") from None
    else:
        fetch = getattr(source, "_fetch", None)
        if fetch is None:
            raise EngineError("internal", f"{where}: cannot read {rel} from this kind of source.")
        data = bytes(fetch(rel)[0])
    if len(data) > 1 << 20:
        raise EngineError("malformed", f"{where}: {rel} is larger than 1 MiB; not an adapter config.")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EngineError("malformed", f"{where}: {rel} is not valid JSON.") from None
    return raw, hashlib.sha256(data).hexdigest()


def base_spec_for(settings: LoraSettings, adapter_label: str, *, local_root: Path | None = None,
                  allow_any_path: bool = True) -> SourceSpec:
    """The base an adapter names (base_model_name_or_path, at its `revision`), as parse_source reads it.

    A local path passes the same checks as one typed by the user: the server passes
    allow_any_path=False, and the path must then lie under `local_root`.
    """
    text = settings.base_model_name_or_path
    if not text:
        raise EngineError("bad_request", f"The adapter {adapter_label} does not name its base model "
                                         "(base_model_name_or_path is empty in adapter_config.json): "
                                         "give the base explicitly.")
    spec = parse_source(text, revision=settings.base_revision, local_root=local_root, allow_any_path=allow_any_path)
    if spec.kind == "local" and local_root is not None:
        root = Path(local_root).resolve()
        if Path(spec.id).is_relative_to(root):  # shown as the user would type it, never as a server path
            spec = replace(spec, display="local:" + Path(spec.id).relative_to(root).as_posix())
    return spec

def adapter_spec_for_hub(spec: SourceSpec) -> SourceSpec:
    """The Hub spec naming the adapter file of a repo (or subfolder) that holds no model weights."""
    return replace(spec, file=ADAPTER_FILE)
