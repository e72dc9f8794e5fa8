"""Model adapters: the one boundary between causalmad and a concrete kind of network.

An adapter runs the model on a batch of inputs, validates inputs before any forward pass,
resolves hook / module names to ``nn.Module`` objects (the places interventions attach
to), and lists the candidate hooks that alignment searches. Everything above this module
(interventions, alignment, scrubbing, detectors) talks to an adapter only, so supporting a
new kind of model means adding one adapter module here.

Four adapters ship:

* [`TransformerLensAdapter`][causalmad.TransformerLensAdapter] for TransformerLens
  ``TransformerBridge`` models (including the offline ``TransformerBridge.boot_native``
  ones); inputs are token ids ``[batch, pos]``, hooks use TransformerLens names
  (``blocks.0.hook_resid_post``).
* [`HuggingFaceAdapter`][causalmad.HuggingFaceAdapter] for Hugging Face ``transformers``
  encoder classifiers of the BERT family (``BertForSequenceClassification`` and kin, or a
  module of one's own around a ``BertModel``: the encoder is found by its structure); inputs
  are padded token ids ``[batch, pos]``, hooks are module paths
  (``bert.encoder.layer.3.output``).
* [`HuggingFaceCausalLMAdapter`][causalmad.HuggingFaceCausalLMAdapter] for Hugging Face
  decoder-only causal language models (GPT-2, Llama, GPT-NeoX and kin); inputs are
  left-padded token ids ``[batch, pos]``, hooks are module paths (``model.layers.1``).
* [`ModuleAdapter`][causalmad.ModuleAdapter] for any ``nn.Module`` taking one float tensor; hooks are module
  paths (``net.1``).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from causalmad.errors import InputError
from causalmad.models.base import CleanWindow, HookInfo, ModelAdapter
from causalmad.models.huggingface import (
    HuggingFaceAdapter,
    HuggingFaceCausalLMAdapter,
    find_decoder,
    find_encoder,
)
from causalmad.models.module import ModuleAdapter
from causalmad.models.transformer_lens import TransformerLensAdapter

__all__ = [
    "CleanWindow",
    "HookInfo",
    "HuggingFaceAdapter",
    "HuggingFaceCausalLMAdapter",
    "ModelAdapter",
    "ModuleAdapter",
    "TransformerLensAdapter",
    "adapt",
    "move_model",
]


def move_model(model: nn.Module, device: torch.device | str) -> None:
    """Put ``model`` on ``device`` in place, only if it is elsewhere (TransformerLens prints
    when it moves a model; that print goes to stderr, so stdout stays clean for JSON).

    Args:
        model: the network; a model without parameters is moved every time.
        device: the target device (``"cuda"`` matches any CUDA device the model is on).
    """
    import contextlib

    device = torch.device(device)
    param = next(model.parameters(), None)
    if (
        param is not None
        and param.device.type == device.type
        and (device.index is None or param.device == device)
    ):
        return
    with contextlib.redirect_stdout(sys.stderr):
        model.to(device)


def adapt(model: nn.Module | ModelAdapter) -> ModelAdapter:
    """Wrap ``model`` in the right adapter, told apart by structure.

    A TransformerLens model (``cfg`` with ``n_ctx``, and ``hook_dict``) gets a
    [`TransformerLensAdapter`][causalmad.TransformerLensAdapter]; a
    ``transformers.PreTrainedModel`` a [`HuggingFaceAdapter`][causalmad.HuggingFaceAdapter]
    if it holds a BERT-style encoder, else a
    [`HuggingFaceCausalLMAdapter`][causalmad.HuggingFaceCausalLMAdapter]; a module of one's
    own around a BERT-style encoder whose ``forward`` takes ``input_ids`` and
    ``attention_mask`` a [`HuggingFaceAdapter`][causalmad.HuggingFaceAdapter]; any other
    ``nn.Module`` a [`ModuleAdapter`][causalmad.ModuleAdapter]. Pass an adapter yourself to
    choose its options (``pad_token_id``, ``hooks``).

    Args:
        model: the network, or an adapter (returned as it is).

    Returns:
        The adapter, with its default options.

    Raises:
        InputError: if ``model`` is not an ``nn.Module``, or is a Hugging Face model that
            is neither a BERT-style encoder nor a decoder-only language model, or whose
            encoder's config has no pad id, or is a plain module with no submodule to hook
            (a bare ``nn.Linear``).

    Example:
        >>> type(adapt(nn.Sequential(nn.Linear(4, 2)))).__name__
        'ModuleAdapter'
    """
    if isinstance(model, ModelAdapter):
        return model
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if hasattr(model, "cfg") and hasattr(model, "hook_dict") and hasattr(model.cfg, "n_ctx"):
        return TransformerLensAdapter(model)
    # a transformers model can only exist once transformers is imported: never import it here
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        return _hugging_face(model)
    if transformers is not None and _wraps_encoder(model, transformers.PreTrainedModel):
        return HuggingFaceAdapter(model)
    return ModuleAdapter(model)


def _hugging_face(model: nn.Module) -> ModelAdapter:
    """A BERT-style encoder's adapter, else a decoder-only causal LM's, by structure."""
    try:
        find_encoder(model)
    except InputError as not_encoder:
        try:
            find_decoder(model)
        except InputError as not_decoder:
            raise InputError(
                f"{not_encoder} Nor is it a decoder-only language model: {not_decoder}"
            ) from None
        return HuggingFaceCausalLMAdapter(model)
    return HuggingFaceAdapter(model)


def _wraps_encoder(model: nn.Module, pretrained: type) -> bool:
    """Whether ``model`` is a module of one's own around a Hugging Face BERT-style encoder
    whose ``forward`` takes ``input_ids`` and ``attention_mask`` (what the adapter passes)."""
    import inspect

    if not any(isinstance(m, pretrained) for m in model.modules()):
        return False
    try:
        params = inspect.signature(model.forward).parameters
        find_encoder(model)
    except (InputError, TypeError, ValueError):
        return False
    keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return keywords or {"input_ids", "attention_mask"} <= set(params)
