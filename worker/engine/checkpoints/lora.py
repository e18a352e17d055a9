"""PEFT LoRA adapters as the finetuned side: the merged model, read lazily (docs/METRICS.md, "Pairing tensors").

A finetuned checkpoint that is a LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`,
in a local directory or a Hub repo) is compared as the model PEFT's `merge_and_unload()` writes:

    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()     # base loaded in its dtype

`LoraMergedSource` has the base's tensors (same names, shapes, dtypes) and reads, for a
LoRA target, W' = W + s * B @ A, bit for bit as PEFT computes it on the CPU:

* `from_pretrained` autocasts the adapter's weights to float32 (`autocast_adapter_dtype=True`,
  the default; the saved values load exactly into float32 parameters), so A and B are float32.
* `Linear.get_delta_weight`: `transpose(B @ A, fan_in_fan_out) * scaling`, all float32, the whole
  matrix in one matmul; `Linear.merge`: `weight.data += delta` (in place, the float32 delta into
  the base dtype: one rounding).
* `Embedding.get_delta_weight`: `(B @ A).T * scaling` (float32); `Embedding.merge`:
  `weight.data += delta.to(weight.dtype)` (the delta is rounded to the base dtype first).
* s = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; r and alpha per module from
  `rank_pattern` / `alpha_pattern`, matched as `peft.utils.other.get_pattern_key` does.
* fan_in_fan_out follows the module as PEFT does (Conv1D: transposed, nn.Linear: not), told
  from the shapes, or for a square GPT-2 Conv1D from the model type and module name.
* Tensors the adapter saves whole (`modules_to_save`, an embedding's `base_layer.weight`, biases
  with bias="all"/"lora_only") are loaded first, as `load_state_dict` copies them into the base
  parameter (rounded to the base dtype), then merged into; `lora_bias`: bias += B.bias * s.

A merged tensor is computed whole when its first piece is read and only the current one is
kept, so memory stays at one matrix. Adapters that cannot be merged this way are refused with
EngineError("unsupported_adapter") naming what is unsupported.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from worker.engine.checkpoints.adapter_config import (
    ADAPTER_CONFIG,
    LoraSettings,
    base_spec_for,
    local_adapter_spec,
    parse_adapter_config,
    read_adapter_config,
    unsupported,
)
from worker.engine.checkpoints.layout import ADAPTER_FILE
from worker.engine.checkpoints.safetensors_format import TensorInfo
from worker.engine.checkpoints.sources import Piece, Source
from worker.engine.checkpoints.spec import SourceSpec
from worker.engine.errors import EngineError
from worker.engine.pairing.names import HEAD_SUFFIXES, ties_embeddings

PEFT_PREFIX = "base_model.model."

# Model types whose GPT-2 style Conv1D layers (weight stored in x out) PEFT merges transposed.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})
CONV1D_MODULES = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.(?P<adapter>[\w\-]+))?\.(?P<param>weight|bias)$")
_EMBED_KEY = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<which>A|B)(?:\.(?P<adapter>[\w\-]+))?$")
_SAVED_SEGMENTS = re.compile(r"\.(?:base_layer|modules_to_save(?:\.[\w\-]+)?)(?=\.)")
# Parameter names of other PEFT methods (and LoRA extensions) that have no place in a plain LoRA file.
_FOREIGN_PARAM = re.compile(
    r"(?:^|\.)(?:lora_\w+|ia3_\w+|hada_\w+|lokr_\w+|oft_\w+|boft_\w+|"
    r"vera_\w+|fourierft_\w+|vblora_\w+|randlora_\w+|token_adapter|trainable_tokens_\w+|ranknum)(?:\.|$)"
)



# --- what to compute for each base tensor ------------------------------------------------------


@dataclass
class _Plan:
    """How one base tensor of the merged model is made."""

    replace: str | None = None  # adapter tensor loaded over the base tensor (cast to the base dtype)
    lora: tuple[str, str] | None = None  # (A, B) adapter tensors of a LoRA delta
    embedding: bool = False  # Embedding merge (delta rounded to the base dtype before the add)
    transpose: bool = False  # fan_in_fan_out: the delta is transposed (GPT-2 Conv1D)
    scaling: float = 1.0
    lora_bias: str | None = None  # lora_B.bias added (times scaling) to this bias tensor


def _strip_peft_prefix(key: str) -> str:
    return key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key


def _choose_mapping(wanted: set[str], base_names: set[str]):
    """name -> base name, tolerating a one-sided prefix ("model.", "transformer.", ...) as a whole."""
    prefixes = {"model.", "transformer."}
    for names in (wanted, base_names):
        for n in names:
            parts = n.split(".")
            for k in range(1, min(3, len(parts))):
                if parts[k - 1].isdigit():
                    break
                prefixes.add(".".join(parts[:k]) + ".")
    candidates = [lambda n: n]
    for p in sorted(prefixes):
        candidates.append(lambda n, p=p: p + n)
        candidates.append(lambda n, p=p: n[len(p):] if n.startswith(p) else n)
    best, best_hits = candidates[0], sum(n in base_names for n in wanted)
    for fn in candidates[1:]:
        hits = sum(fn(n) in base_names for n in wanted)
        if hits > best_hits:
            best, best_hits = fn, hits
    return best


def plan_merge(adapter: dict[str, TensorInfo], base: dict[str, TensorInfo], base_config: dict | None,
               cfg: LoraSettings, where: str) -> tuple[dict[str, _Plan], dict[str, TensorInfo]]:
    """Which base tensors the adapter changes and how; also the merged model's tensor infos.

    Raises unsupported_adapter for what cannot be merged exactly (named), malformed for a file
    that contradicts its config.
    """
    lora: dict[str, dict[str, str]] = {}  # module -> {"A": key, "B": key, "bias": key, "kind": linear|embedding}
    saved: dict[str, str] = {}  # model tensor name -> adapter key (whole tensors loaded over the base)
    adapter_names: set[str] = set()
    foreign: list[str] = []
    for key in adapter:
        short = _strip_peft_prefix(key)
        if m := _LORA_KEY.match(short):
            slot = lora.setdefault(m["module"], {"kind": "linear"})
            slot["bias" if (m["which"], m["param"]) == ("B", "bias") else m["which"]] = key
            if m["param"] == "bias" and m["which"] == "A":
                foreign.append(key)
            adapter_names.add(m["adapter"] or "")
        elif m := _EMBED_KEY.match(short):
            slot = lora.setdefault(m["module"], {"kind": "embedding"})
            slot["kind"] = "embedding"
            slot[m["which"]] = key
            adapter_names.add(m["adapter"] or "")
        elif _FOREIGN_PARAM.search(short):
            foreign.append(key)
        else:
            saved[_SAVED_SEGMENTS.sub("", short)] = key
    if foreign:
        shown = ", ".join(sorted(foreign)[:3])
        raise unsupported(where, f"tensors of another PEFT method or LoRA variant ({shown})")
    if len(adapter_names) > 1:
        names = ", ".join(sorted(n or "unnamed" for n in adapter_names))
        raise unsupported(where, f"one file holds several adapters ({names})")
    for module, slot in lora.items():
        if "A" not in slot or "B" not in slot:
            raise EngineError("malformed", f"{where}: LoRA module {module} has lora_A or lora_B missing.")
        if slot["kind"] == "linear" and (len(adapter[slot["A"]].shape) != 2 or len(adapter[slot["B"]].shape) != 2):
            raise unsupported(where, f"LoRA on a convolution layer ({module})")
    for key in {k for slot in lora.values() for k in (slot["A"], slot["B"], slot.get("bias"))} | set(saved.values()):
        if key is not None and adapter[key].dtype not in ("BF16", "F16", "F32", "F64", "F8_E4M3", "F8_E5M2"):
            raise EngineError("malformed", f"{where}: adapter tensor {key} has dtype {adapter[key].dtype}, "
                                           "not a float.")

    base_names = set(base)
    wanted = {f"{m}.weight" for m in lora} | {f"{m}.bias" for m, s in lora.items() if "bias" in s} | set(saved)
    if ties_embeddings(base_config):
        # PEFT would change the one matrix shared by the head and the embeddings (or untie a saved copy).
        tied = sorted(n for n in wanted if n.endswith(HEAD_SUFFIXES))
        if tied:
            raise unsupported(where, f"it changes the output head {tied[0]}, which the base ties to its input "
                                      "embeddings")
    to_base = _choose_mapping(wanted, base_names)
    missing = sorted(n for n in wanted if to_base(n) not in base_names)
    if missing:
        shown = ", ".join(n.removesuffix(".weight") for n in missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise unsupported(where, f"target modules not found in the base ({shown}); is this the adapter's base model?")

    plans: dict[str, _Plan] = {}
    infos = dict(base)
    for name, key in saved.items():
        target = to_base(name)
        plans.setdefault(target, _Plan()).replace = key
        b, s = base[target], adapter[key]
        if s.shape != b.shape:  # e.g. a resized vocabulary saved whole: the merged model has its shape
            infos[target] = TensorInfo(target, b.dtype, s.shape, b.file, b.offset, math.prod(s.shape) * b.itemsize)
    model_type = (base_config or {}).get("model_type")
    for module, slot in lora.items():
        target = to_base(f"{module}.weight")
        r, scaling = cfg.scaling(module)
        a_shape, b_shape, w_shape = adapter[slot["A"]].shape, adapter[slot["B"]].shape, infos[target].shape
        if a_shape[0] != r or b_shape[1] != r:
            raise EngineError("malformed", f"{where}: {module} has rank {a_shape[0]} in the file but r={r} in "
                                           f"{ADAPTER_CONFIG} (r / rank_pattern).")
        plan = plans.setdefault(target, _Plan())
        plan.lora, plan.scaling = (slot["A"], slot["B"]), scaling
        if slot["kind"] == "embedding":
            plan.embedding = True
            if tuple(w_shape) != (a_shape[1], b_shape[0]):
                raise EngineError("malformed", f"{where}: the LoRA of embedding {module} ({a_shape[1]} x "
                                               f"{b_shape[0]}) does not fit the base weight {list(w_shape)}.")
            continue
        out_in, in_out = (b_shape[0], a_shape[1]), (a_shape[1], b_shape[0])
        if tuple(w_shape) not in (out_in, in_out):
            raise EngineError("malformed", f"{where}: the LoRA of {module} (in {a_shape[1]}, out {b_shape[0]}) does "
                                           f"not fit the base weight {list(w_shape)}.")
        if out_in != in_out:
            plan.transpose = tuple(w_shape) == in_out
        else:  # square: PEFT transposes for a Conv1D module whatever the config says, never for nn.Linear
            plan.transpose = model_type in CONV1D_MODEL_TYPES and module.rsplit(".", 1)[-1] in CONV1D_MODULES
        if "bias" in slot:
            bias_name = to_base(f"{module}.bias")
            plans.setdefault(bias_name, _Plan()).lora_bias = slot["bias"]
            plans[bias_name].scaling = scaling
            if adapter[slot["bias"]].shape != infos[bias_name].shape:
                raise EngineError("malformed", f"{where}: lora_B.bias of {module} does not fit the base's bias.")

    # bias="all"/"lora_only": the trained biases must be in the file, else the merge is not the finetune.
    saved_targets = {to_base(n) for n in saved}
    if cfg.bias == "all":
        # 1-D: old GPT-2 files also hold `attn.bias`, a causal-mask buffer no model parameter loads
        need = sorted(n for n in base if (n == "bias" or n.endswith(".bias")) and len(base[n].shape) == 1
                      and n not in saved_targets)
    elif cfg.bias == "lora_only":
        need = sorted(to_base(f"{m}.bias") for m, s in lora.items() if s["kind"] == "linear"
                      and to_base(f"{m}.bias") in base and to_base(f"{m}.bias") not in saved_targets)
    else:
        need = []
    if need:
        raise unsupported(where, f"bias={cfg.bias!r} but the trained biases are not in the file (e.g. {need[0]})")
    return plans, infos


# --- the merged model as a Source -----------------------------------------------------------------


class LoraMergedSource(Source):
    """The finetuned model an adapter makes of its base, read lazily; see the module docstring."""

    def __init__(self, adapter: Source, settings: LoraSettings, base: Source, *, config_digest: str,
                 owns_base: bool = False, spec: SourceSpec | None = None):
        self.spec = spec or adapter.spec  # as the user named it (the adapter file may have been found)
        self.adapter = adapter  # the adapter file's tensors (LocalSource or HubSource)
        self.lora = settings
        self.base = base
        self.owns_base = owns_base
        where = adapter.spec.label
        self._plans, self.tensors = plan_merge(adapter.tensors, base.tensors, base.config, settings, where)
        self.config = base.config
        self.prefetch_bytes = base.prefetch_bytes
        # The merged model's identity: the adapter (its files and config) and the base it merges onto.
        self.sha = hashlib.sha256(
            json.dumps(["peft-lora-merge", adapter.sha, config_digest, base.sha]).encode()
        ).hexdigest()
        self._lock = threading.Lock()
        self._current: tuple[str, torch.Tensor] | None = None

    @property
    def targets(self) -> list[str]:
        """Base tensors the adapter changes (LoRA targets, saved modules, biases), sorted."""
        return sorted(self._plans)

    @property
    def bytes_read(self) -> int:
        # A base shared with the analysis counts its own reads there.
        return self.adapter.bytes_read + (self.base.bytes_read if self.owns_base else 0)

    @property
    def total_bytes(self) -> int:
        return self.base.total_bytes + self.adapter.total_bytes

    def take_base(self) -> Source:
        """The base this adapter merges onto, now owned (and closed) by the caller."""
        self.owns_base = False
        return self.base

    def describe(self) -> dict:
        out = {k: v for k, v in self.adapter.describe().items() if k not in ("subfolder", "file")}
        out.update(self.spec.placement(), sha=self.sha)
        out["adapter"] = {**self.lora.describe(), "sha": self.adapter.sha, "base_sha": self.base.sha}
        return out

    # --- reading ----------------------------------------------------------------------------

    def merged(self, name: str) -> torch.Tensor:
        """The whole merged tensor `name` (the base tensor itself when the adapter leaves it alone)."""
        if name not in self._plans:
            return self.base.read(name)
        with self._lock:
            if self._current is not None and self._current[0] == name:
                return self._current[1]
            self._current = None  # at most one merged matrix alive
            tensor = self._compute(name, self._plans[name])
            self._current = (name, tensor)
            return tensor

    def _compute(self, name: str, plan: _Plan) -> torch.Tensor:
        info = self.tensors[name]
        dtype = info.torch_dtype
        if plan.replace is not None:
            # load_state_dict: param.copy_(saved), i.e. rounded to the parameter's dtype.
            weight = self.adapter.read(plan.replace).to(dtype, copy=True)
        else:
            weight = self.base.read(name).clone()
        if plan.lora is not None:
            # from_pretrained autocasts the adapter to float32; the saved values load exactly.
            a = self.adapter.read(plan.lora[0]).to(torch.float32)
            b = self.adapter.read(plan.lora[1]).to(torch.float32)
            if plan.embedding:
                delta = (b @ a).T * plan.scaling  # Embedding.get_delta_weight: transpose(B @ A, True) * s
                weight += delta.to(weight.dtype)  # Embedding.merge
            else:
                delta = b @ a  # Linear.get_delta_weight: transpose(B @ A, fan_in_fan_out) * s
                if plan.transpose:
                    delta = delta.T
                weight += delta * plan.scaling  # Linear.merge: weight.data += delta (float32 into the base dtype)
        if plan.lora_bias is not None:
            # Linear.merge with lora_bias: bias.data += lora_B.bias * scaling
            weight += self.adapter.read(plan.lora_bias).to(torch.float32) * plan.scaling
        return weight.reshape(info.shape)

    def read_piece(self, piece: Piece) -> torch.Tensor:
        if piece.name not in self._plans:
            return self.base.read_piece(piece)
        return self.merged(piece.name).reshape(-1)[piece.start:piece.stop]

    def read(self, name: str) -> torch.Tensor:
        return self.merged(name) if name in self._plans else self.base.read(name)

    def iter_pieces(self, pieces: Sequence[Piece]) -> Iterator[tuple[Piece, torch.Tensor]]:
        """Runs of untouched tensors stream from the base (its read-ahead); merged ones are computed whole."""
        i = 0
        while i < len(pieces):
            if pieces[i].name in self._plans:
                yield pieces[i], self.read_piece(pieces[i])
                i += 1
                continue
            j = i
            while j < len(pieces) and pieces[j].name not in self._plans:
                j += 1
            yield from self.base.iter_pieces(pieces[i:j])
            i = j

    def release(self, piece: Piece) -> None:
        if piece.name not in self._plans:
            self.base.release(piece)
        elif piece.stop >= self.tensors[piece.name].numel:
            with self._lock:
                if self._current is not None and self._current[0] == piece.name:
                    self._current = None

    def close(self) -> None:
        self._current = None
        self.adapter.close()
        if self.owns_base:
            self.base.close()

    def __repr__(self) -> str:
        return f"LoraMergedSource({self.adapter.spec.label} on {self.base.spec.label})"


# --- finding and opening adapters ---------------------------------------------------------------



def open_adapter(spec: SourceSpec, *, base: Source | None, local_root: Path | None,
                 allow_any_path: bool, open_plain, open_base) -> Source | None:
    """The merged model when `spec` is a LoRA adapter checkpoint, else None (open it as a model).

    `open_plain(spec)` opens a spec as a plain checkpoint, `open_base(spec)` as any kind of
    checkpoint (the adapter's base may itself be one). A local adapter is recognised from its
    files; a Hub repo is opened as a model first and, when it holds no model weights, as an adapter.
    `base` is the model to merge onto; when None it is opened from the adapter's
    base_model_name_or_path (and owned, closed with the merged source).
    """
    if spec.kind == "local":
        adapter_spec = local_adapter_spec(spec)
        if adapter_spec is None:
            return None
        adapter = open_plain(adapter_spec)
    elif spec.file:
        if PurePosixPath(spec.file).name != ADAPTER_FILE:
            return None
        adapter = open_plain(spec)
    else:
        return None  # the caller tries the model first (see open_source)
    return merge_adapter(adapter, spec, base=base, local_root=local_root, allow_any_path=allow_any_path,
                         open_base=open_base)


def merge_adapter(adapter: Source, spec: SourceSpec, *, base: Source | None, local_root: Path | None,
                  allow_any_path: bool, open_base, config: tuple[object, str] | None = None) -> Source:
    """Wrap an opened adapter file into its merged model (see open_adapter).

    `spec` is the checkpoint as the user named it; `config` is (adapter_config.json, digest)
    when already read.
    """
    opened = None
    try:
        raw, digest = config or read_adapter_config(adapter, adapter.spec)
        settings = parse_adapter_config(raw, spec.label)
        if base is None:
            base_spec = base_spec_for(settings, adapter.spec.label, local_root=local_root,
                                      allow_any_path=allow_any_path)
            opened = base = open_base(base_spec)
        return LoraMergedSource(adapter, settings, base, config_digest=digest, owns_base=opened is not None, spec=spec)
    except BaseException:
        adapter.close()
        if opened is not None:
            opened.close()
        raise

