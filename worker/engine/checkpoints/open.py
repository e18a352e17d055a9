"""open_source: a SourceSpec to the Source that reads it.

The one module that knows both kinds of source: `sources` (local directories, the
shared parts) imports neither `hub` nor this module, and `hub` imports `sources`, so
the dependencies go one way. huggingface_hub is imported only when a Hub spec is opened.
"""

from __future__ import annotations

from pathlib import Path

from worker.engine.checkpoints import quantized
from worker.engine.checkpoints.adapter_config import adapter_spec_for_hub, read_adapter_config
from worker.engine.checkpoints.local import LocalSource
from worker.engine.checkpoints.lora import merge_adapter, open_adapter
from worker.engine.checkpoints.sources import Source
from worker.engine.checkpoints.spec import SourceSpec
from worker.engine.errors import EngineError


def _open_plain(spec: SourceSpec, token: str | None) -> Source:
    """The stored checkpoint, read as the model's weights (quantized.py: fp8 blocks, MXFP4, fused experts)."""
    if spec.kind == "local":
        source: Source = LocalSource(spec)
    else:
        from worker.engine.checkpoints.hub import HubSource

        source = HubSource(spec, token=token)
    try:
        return quantized.view(source)
    except BaseException:
        source.close()
        raise


def open_source(spec: SourceSpec, *, token: str | None = None, base: Source | None = None,
                local_root: Path | None = None, allow_any_path: bool = True) -> Source:
    """Open a checkpoint: resolve it and read every header, but no weight bytes yet.

    A PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors and no model weights,
    or `file` naming adapter_model.safetensors) opens as the merged model (worker/engine/checkpoints/lora.py),
    merged onto `base`, or when None onto the base its config names, parsed with `local_root` /
    `allow_any_path` as parse_source does: a server passes allow_any_path=False.
    """
    def plain(s: SourceSpec) -> Source:
        return _open_plain(s, token)

    def any_kind(s: SourceSpec) -> Source:
        return open_source(s, token=token, local_root=local_root, allow_any_path=allow_any_path)

    options = dict(base=base, local_root=local_root, allow_any_path=allow_any_path, open_base=any_kind)
    merged = open_adapter(spec, open_plain=plain, **options)
    if merged is not None:
        return merged
    try:
        return plain(spec)
    except EngineError as exc:
        # A Hub repo with no model weights may be an adapter: open its adapter file instead.
        if exc.code != "no_safetensors" or spec.kind != "hub" or spec.file:
            raise
        try:
            adapter = plain(adapter_spec_for_hub(spec))
        except EngineError:
            raise exc from None
        try:
            config = read_adapter_config(adapter, adapter.spec)
        except EngineError:
            adapter.close()
            raise exc from None
    return merge_adapter(adapter, spec, config=config, **options)


def open_pair(base: SourceSpec | None, tuned: SourceSpec, *, token: str | None = None,
              local_root: Path | None = None, allow_any_path: bool = True) -> tuple[Source, Source]:
    """Open a base and a finetuned checkpoint (headers only), closing both on failure.

    A finetuned LoRA adapter is merged onto the base given; with no base it is merged onto the
    base its adapter_config.json names (parsed with `local_root` / `allow_any_path`), which is
    then returned as the base. With no base and no adapter: EngineError("bad_request").
    """
    options = dict(token=token, local_root=local_root, allow_any_path=allow_any_path)
    base_src = open_source(base, **options) if base is not None else None
    try:
        tuned_src = open_source(tuned, base=base_src, **options)
    except BaseException:
        if base_src is not None:
            base_src.close()
        raise
    if base_src is None:
        take_base = getattr(tuned_src, "take_base", None)
        if take_base is None:
            tuned_src.close()
            raise EngineError(
                "bad_request",
                f"A base model is required: {tuned.label} is not a PEFT LoRA adapter (adapter_config.json + "
                "adapter_model.safetensors), so there is no base to take from it.",
            )
        base_src = take_base()
    return base_src, tuned_src
