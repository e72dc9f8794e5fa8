"""The adapter for Hugging Face encoder classifiers of the BERT family, found by the
encoder's structure (embeddings, then a module list of layers), not by its name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from causalmad.errors import InputError
from causalmad.models.base import HookInfo, ModelAdapter, _check_token_ids


class HuggingFaceAdapter(ModelAdapter):
    """Adapter for a Hugging Face encoder classifier of the BERT family.

    Inputs are token ids ``[batch, pos]`` padded to a common length with the tokenizer's
    pad id; the adapter builds the attention mask from that id (``ids != pad``), so padded
    positions are never attended to. The output is the model's ``.logits``
    (``[batch, classes]`` for a sequence classifier). Hooks are module paths; the
    candidate hooks alignment searches, per layer ``i`` of ``{base}.encoder.layer``
    (``base`` = the encoder's module path, found by structure (``find_encoder``):
    ``bert`` for BERT, ``""`` for a bare ``BertModel``, ``encoder`` in a classifier of
    one's own that keeps its ``BertModel`` there):

    * ``{base}.embeddings`` — the residual stream entering layer 0 (``resid_pre``);
    * ``{base}.encoder.layer.{i}.attention.output.dense`` — attention output before the
      residual sum and LayerNorm (``attn_out``);
    * ``{base}.encoder.layer.{i}.output.dense`` — MLP output before the residual sum and
      LayerNorm (``mlp_out``);
    * ``{base}.encoder.layer.{i}.output`` — the layer's output, the residual stream after
      layer ``i`` (``resid_post``; ``[batch, pos, d]``).

    Every other named module is a valid site too
    ([`hook_names`][causalmad.HuggingFaceAdapter.hook_names]), among them
    ``{base}.encoder.layer.{i}.attention.self``, whose ``[batch, pos, n_heads * d_head]``
    output packs the heads (``Site(..., head=h)`` works there). Heads are not searched by
    default: with a position-less readout that is ``n_heads`` more sites per layer, and the
    hypothesis-free family would grow by ``n_heads x pos`` explanations per layer.

    Scrubbing resumes from a layer's output ([`resume_point`][causalmad.HuggingFaceAdapter.resume_point]) for
    ``BertForSequenceClassification``-shaped models (pooler on the first token, dropout,
    linear classifier); for other heads it reruns the whole model.

    Args:
        model: a ``transformers.PreTrainedModel``, or any ``nn.Module`` whose ``forward``
            takes ``input_ids`` and ``attention_mask`` and returns logits, holding a
            BERT-style encoder: a module ``base`` with ``{base}.embeddings`` and an
            ``{base}.encoder.layer`` module list, found by that structure whatever
            ``base`` is called (``find_encoder``).
        pad_token_id: the pad id of the inputs (default: the ``config.pad_token_id`` of
            the model, else of its encoder).
        encoder: the encoder's module path, where the model holds more than one.

    Raises:
        InputError: the model has no BERT-style layer stack, or several, or no pad id, or
            ``encoder`` does not name one.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                  intermediate_size=32, max_position_embeddings=16, num_labels=2)
        >>> adapter = HuggingFaceAdapter(BertForSequenceClassification(cfg).eval())
        >>> adapter.final_hook()
        'bert.encoder.layer.1.output'
        >>> adapter.forward(torch.tensor([[2, 7, 9, 3, 0, 0]])).shape
        torch.Size([1, 2])
    """

    has_positions = True

    def __init__(self, model: nn.Module, pad_token_id: int | None = None, encoder: str | None = None) -> None:
        self.model = model
        modules = dict(model.named_modules())
        self._names = [n for n in modules if n]
        self.base = find_encoder(model) if encoder is None else _check_encoder(model, modules, encoder)
        base_module = modules[self.base]
        self.config: Any = getattr(model, "config", None) or getattr(base_module, "config", None)
        self._layers_path = self._path("encoder.layer")
        layers = modules[self._layers_path]
        self.n_layers = len(layers)
        pad = pad_token_id if pad_token_id is not None else getattr(self.config, "pad_token_id", None)
        if pad is None:
            raise InputError(
                f"{type(model).__name__}'s config has no pad_token_id; pass HuggingFaceAdapter(model, "
                "pad_token_id=tokenizer.pad_token_id)."
            )
        self.pad_token_id = int(pad)
        self.vocab_size = int(getattr(self.config, "vocab_size", 0) or 0)
        self.max_positions = int(getattr(self.config, "max_position_embeddings", 0) or 0)
        self.n_heads = int(getattr(self.config, "num_attention_heads", 0) or 0)
        hidden = int(getattr(self.config, "hidden_size", 0) or 0)
        self.d_head = hidden // self.n_heads if self.n_heads else 0

    def _path(self, rest: str) -> str:
        return f"{self.base}.{rest}" if self.base else rest

    def _layer_of(self, hook: str) -> int | None:
        """Index of the encoder layer ``hook`` lies in, or ``None`` if outside the stack."""
        head = self._layers_path + "."
        if not hook.startswith(head):
            return None
        index = hook[len(head) :].split(".")[0]
        return int(index) if index.isdigit() else None

    def attention_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """The attention mask of padded token ids.

        Args:
            inputs: ``[batch, pos]`` token ids.

        Returns:
            ``[batch, pos]`` int64, 1 where a token is not the pad id, 0 where it is.
        """
        return (inputs != self.pad_token_id).long()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the model on padded token ids, with the attention mask built from them.

        Args:
            inputs: ``[batch, pos]`` token ids as
                [`check_inputs`][causalmad.HuggingFaceAdapter.check_inputs] returns them, on
                the model's device.

        Returns:
            The model's logits (``[batch, classes]`` for a sequence classifier): its
            output's ``.logits``, its first element, or the output itself if a tensor.

        Raises:
            InputError: if the model's output carries no logits.
        """
        out = self.model(input_ids=inputs, attention_mask=self.attention_mask(inputs))
        return _logits_of(out)

    def check_inputs(self, inputs: object, what: str = "inputs") -> torch.Tensor:
        """Validate a batch of padded token ids before any forward pass.

        Args:
            inputs: a tensor or array-like ``[batch, pos]`` of token ids (integer-valued
                floats are accepted).
            what: how the batch is named in error messages.

        Returns:
            The batch as an int64 ``[batch, pos]`` tensor.

        Raises:
            InputError: if the batch is not array-like, a scalar, empty, holds NaN,
                infinite or non-integer values, is not 2-D, is longer than
                ``max_position_embeddings``, holds an id outside the vocabulary, or has a
                row made only of the pad id.
        """
        x = _check_token_ids(
            inputs,
            what,
            self.max_positions,
            "max_position_embeddings",
            self.vocab_size,
            f" padded with pad id {self.pad_token_id}",
        )
        _refuse_pad_only_rows(x, self.pad_token_id, what)
        return x

    def hook_names(self) -> list[str]:
        """Every named module of the model.

        Returns:
            Their paths (``bert.encoder.layer.3.output``), the root module excluded.
        """
        return self._names

    def candidate_hooks(self) -> list[HookInfo]:
        """The hooks alignment searches by default (listed in the class docstring).

        Returns:
            The embeddings (``resid_pre``, layer 0), then per encoder layer ``i`` its
            ``attn_out``, ``mlp_out`` and ``resid_post`` modules (those the model has), as
            ``HookInfo`` with ``layer = i``.
        """
        names = set(self._names)
        hooks = [HookInfo(self._path("embeddings"), 0, "resid_pre")]
        for i in range(self.n_layers):
            layer = f"{self._layers_path}.{i}"
            for suffix, component in (
                ("attention.output.dense", "attn_out"),
                ("output.dense", "mlp_out"),
                ("output", "resid_post"),
            ):
                if f"{layer}.{suffix}" in names:
                    hooks.append(HookInfo(f"{layer}.{suffix}", i, component))
        return hooks

    def final_hook(self) -> str:
        """The hook whose output feeds the classifier head.

        Returns:
            The last encoder layer's output (``bert.encoder.layer.11.output``).
        """
        return f"{self._layers_path}.{self.n_layers - 1}.output"

    def head_width(self, hook: str) -> int:
        """Width of one attention head packed in a hook's last axis.

        Args:
            hook: a hook name.

        Returns:
            ``hidden_size // num_attention_heads`` for a layer's ``attention.self``, whose
            output packs the heads; 0 for every other hook.
        """
        return self.d_head if hook.endswith("attention.self") and self._layer_of(hook) is not None else 0

    def _resumable(self) -> bool:
        # run_from rebuilds the head by hand: only the BERT sequence-classification head is known
        return (
            type(self.model).__name__ == "BertForSequenceClassification"
            and self.base == "bert"
            and getattr(self.model.bert, "pooler", None) is not None
        )  # type: ignore[union-attr]

    def resume_point(self, hooks: Sequence[str]) -> str | None:
        """The output of the encoder layer before the earliest one a run patches.

        Args:
            hooks: the hooks a run patches.

        Returns:
            That layer's output (``bert.encoder.layer.2.output``), or ``None`` (run from
            the start) if the model is not ``BertForSequenceClassification``-shaped, a
            hook lies outside the layer stack, or the earliest patched layer is the first.
        """
        layers = [self._layer_of(h) for h in hooks]
        if not layers or not self._resumable() or any(i is None for i in layers):
            return None
        first = min(i for i in layers if i is not None)
        return f"{self._layers_path}.{first - 1}.output" if first > 0 else None

    def run_from(self, point: str, act: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the encoder layers after ``point``, the pooler and the classifier.

        Args:
            point: a layer output that [`resume_point`][causalmad.HuggingFaceAdapter.resume_point] returned.
            act: ``[batch, pos, d]``, that layer's output for each row.
            inputs: ``[batch, pos]`` the rows' token ids, for the attention mask.

        Returns:
            ``[batch, classes]`` logits.

        Raises:
            InputError: if ``inputs`` is ``None``.
            NotImplementedError: if ``point`` lies outside the encoder's layer stack, or the
                model is not ``BertForSequenceClassification``-shaped.
        """
        if inputs is None:
            raise InputError("HuggingFaceAdapter.run_from needs the rows' token ids (the attention mask).")
        layer = self._layer_of(point)
        if layer is None or not self._resumable():
            raise NotImplementedError(f"{type(self).__name__} cannot resume from {point!r}.")
        from transformers.masking_utils import create_bidirectional_mask

        bert: Any = self.model.bert
        # what BertModel builds for an encoder (public helper: BertModel's own private
        # wrapper around it changed its arguments between transformers 5.17 and 5.24)
        mask = create_bidirectional_mask(
            config=bert.config, inputs_embeds=act, attention_mask=self.attention_mask(inputs)
        )
        x = act
        blocks = list(bert.encoder.layer[layer + 1 :])
        last = blocks.pop() if blocks and self._first_token_only(blocks[-1]) else None
        for block in blocks:
            x = block(x, mask)
            x = x[0] if isinstance(x, tuple) else x
        if last is not None:
            x = _bert_layer_first_token(last, x, self.attention_mask(inputs).bool())
        model: Any = self.model
        return model.classifier(model.dropout(bert.pooler(x)))

    def _first_token_only(self, block: nn.Module) -> bool:
        """Whether the last layer may compute the first token alone: the pooler reads
        nothing else, provided no hook watches inside the layer (a patched site there needs
        every position), the model is in eval mode and uses absolute position embeddings."""
        watched = any(m._forward_hooks or m._forward_pre_hooks for m in block.modules())
        absolute = getattr(self.config, "position_embedding_type", "absolute") in (None, "absolute")
        return not watched and not self.model.training and absolute


def _is_encoder(modules: dict[str, nn.Module], base: str) -> bool:
    join = (lambda rest: f"{base}.{rest}") if base else (lambda rest: rest)
    return join("embeddings") in modules and isinstance(modules.get(join("encoder.layer")), nn.ModuleList)


def find_encoder(model: nn.Module) -> str:
    """The module path of the BERT-style encoder inside ``model``: the module ``base``
    with an ``embeddings`` submodule and an ``encoder.layer`` module list, found by that
    structure whatever it is called (``bert`` in ``BertForSequenceClassification``,
    ``roberta``, ``encoder`` in a user's own classifier, ``""`` for a bare ``BertModel``).
    The model's ``base_model_prefix`` is tried first, then every module, shallowest first.

    Args:
        model: the model to search.

    Returns:
        The encoder's module path (``""`` for the model itself).

    Raises:
        InputError: no module has that structure (the message lists what was found), or
            several at the same depth do (pass ``HuggingFaceAdapter(..., encoder=...)``).

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> class Classifier(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.encoder = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
        ...                                             num_attention_heads=2, intermediate_size=16))
        >>> find_encoder(Classifier())
        'encoder'
    """
    modules = dict(model.named_modules())
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    if prefix in modules and _is_encoder(modules, prefix):
        return prefix
    found = [n for n in modules if _is_encoder(modules, n)]
    if not found:
        raise InputError(_no_encoder(model, modules))
    depth = min(_depth(n) for n in found)
    shallowest = [n for n in found if _depth(n) == depth]
    if len(shallowest) > 1:
        raise InputError(
            f"{type(model).__name__} holds {len(shallowest)} BERT-style encoders at the same depth "
            f"({', '.join(map(repr, shallowest[:4]))}); name the one to use: "
            f"HuggingFaceAdapter(model, encoder={shallowest[0]!r})."
        )
    return shallowest[0]


def _depth(name: str) -> int:
    return name.count(".") + 1 if name else 0


def _check_encoder(model: nn.Module, modules: dict[str, nn.Module], encoder: str) -> str:
    if not _is_encoder(modules, encoder):
        raise InputError(f"encoder={encoder!r}: {_no_encoder(model, modules, encoder)}")
    return encoder


def _no_encoder(model: nn.Module, modules: dict[str, nn.Module], under: str | None = None) -> str:
    """What was looked for and what was found instead, for the error of a model that has
    no BERT-style encoder (under ``under``, or anywhere)."""
    embeddings = [n for n in modules if n.rsplit(".", 1)[-1] == "embeddings"]
    lists = [n for n, m in modules.items() if isinstance(m, nn.ModuleList)]

    def some(names: list[str]) -> str:
        return ", ".join(map(repr, names[:4])) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    where = f"under {under!r}" if under is not None else "in any of its modules"
    return (
        f"HuggingFaceAdapter needs a BERT-family encoder: a module with an 'embeddings' submodule and a "
        f"module list 'encoder.layer' ('BASE.embeddings' and 'BASE.encoder.layer'); "
        f"{type(model).__name__} has "
        f"none {where} (modules named 'embeddings': {some(embeddings) or 'none'}; module lists: "
        f"{some(lists) or 'none'}). Wrap the model in your own ModelAdapter subclass instead."
    )


def _bert_layer_first_token(block: Any, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``[batch, 1, d]`` output of a BERT layer at the first position only: its query
    attends to every unpadded key (``keep``: ``[batch, pos]``), then the attention output,
    MLP and LayerNorms run on that one position. Equal to the full layer's first position
    up to float rounding, at about a sixth of its cost on 16 positions."""
    sa = block.attention.self
    b = len(x)
    hd = sa.attention_head_size

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, t.shape[1], -1, hd).transpose(1, 2)

    q, k, v = heads(sa.query(x[:, :1])), heads(sa.key(x)), heads(sa.value(x))
    ctx = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=keep[:, None, None, :], scale=sa.scaling
    )
    h = block.attention.output(ctx.transpose(1, 2).reshape(b, 1, -1), x[:, :1])
    return block.output(block.intermediate(h), h)


def _logits_of(out: object) -> torch.Tensor:
    """The logits of a Hugging Face model output (an output object, a tuple or a tensor)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise InputError(
        f"The model returned a {type(out).__name__} without .logits; causalmad needs a classification "
        "model (e.g. BertForSequenceClassification) whose output carries logits."
    )


class HuggingFaceCausalLMAdapter(ModelAdapter):
    """Adapter for a Hugging Face decoder-only causal language model (GPT-2, Llama,
    GPT-NeoX / Pythia, Mistral and kin: ``*ForCausalLM``).

    The decoder is found by structure, not by name: the input embeddings
    (``get_input_embeddings()``) and the module list of ``config.num_hidden_layers``
    blocks (``transformer.h`` in GPT-2, ``model.layers`` in Llama, ``gpt_neox.layers`` in
    GPT-NeoX). Inputs are token ids ``[batch, pos]``; with a pad id, padded positions are
    masked out of attention and position ids count real tokens only, so **left** padding
    keeps every row's last token at position ``-1`` (the readout ``Readout(position=-1)``
    reads it). The output is the logits ``[batch, pos, vocab]``. Hooks are module paths;
    the candidate hooks alignment searches, per block ``i`` of the layer list ``L``:

    * the input embeddings (``resid_pre`` of block 0; the token embeddings alone in GPT-2,
      which adds its position embeddings after them);
    * ``L.{i}.{attention}`` — the attention output before the residual sum (``attn_out``);
    * ``L.{i}.mlp`` — the MLP output before the residual sum (``mlp_out``);
    * ``L.{i}`` — the block's output, the residual stream after block ``i`` (``resid_post``).

    Args:
        model: a ``transformers`` causal language model.
        pad_token_id: the pad id of padded inputs (default: ``config.pad_token_id``;
            ``None``: inputs are not padded).

    Raises:
        InputError: the model has no input embeddings or no list of decoder blocks.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> cfg = GPT2Config(vocab_size=20, n_embd=16, n_layer=2, n_head=2, n_positions=16)
        >>> adapter = HuggingFaceCausalLMAdapter(GPT2LMHeadModel(cfg).eval())
        >>> adapter.final_hook()
        'transformer.h.1'
        >>> adapter.forward(torch.tensor([[2, 7, 9, 3]])).shape
        torch.Size([1, 4, 20])
    """

    has_positions = True

    def __init__(self, model: nn.Module, pad_token_id: int | None = None) -> None:
        self.model = model
        self.config: Any = getattr(model, "config", None)
        modules = dict(model.named_modules())
        self._names = [n for n in modules if n]
        self._layers_path, self._embed_path = find_decoder(model)
        layers = modules[self._layers_path]
        self.n_layers = len(layers)  # type: ignore[arg-type]
        self._attn = {i: _attention_child(block) for i, block in enumerate(layers.children())}
        pad = pad_token_id if pad_token_id is not None else getattr(self.config, "pad_token_id", None)
        self.pad_token_id = None if pad is None else int(pad)
        self.vocab_size = int(getattr(self.config, "vocab_size", 0) or 0)
        self.max_positions = int(getattr(self.config, "max_position_embeddings", 0) or 0)

    def attention_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """The attention mask of (left-)padded token ids.

        Args:
            inputs: ``[batch, pos]`` token ids.

        Returns:
            ``[batch, pos]``, 1 where a token is not the pad id, 0 where it is (int64; all
            ones, of the dtype of ``inputs``, without a pad id).
        """
        if self.pad_token_id is None:
            return torch.ones_like(inputs)
        return (inputs != self.pad_token_id).long()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the model on left-padded token ids: padding masked out of attention,
        position ids counting real tokens only, no key-value cache.

        Args:
            inputs: ``[batch, pos]`` token ids as
                [`check_inputs`][causalmad.HuggingFaceCausalLMAdapter.check_inputs] returns
                them, on the model's device.

        Returns:
            ``[batch, pos, vocab]`` logits.

        Raises:
            InputError: if the model's output carries no logits.
        """
        mask = self.attention_mask(inputs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
        out = self.model(input_ids=inputs, attention_mask=mask, position_ids=positions, use_cache=False)
        return _logits_of(out)

    def check_inputs(self, inputs: object, what: str = "inputs") -> torch.Tensor:
        """Validate a batch of token ids before any forward pass.

        Args:
            inputs: a tensor or array-like ``[batch, pos]`` of token ids (integer-valued
                floats are accepted).
            what: how the batch is named in error messages.

        Returns:
            The batch as an int64 ``[batch, pos]`` tensor.

        Raises:
            InputError: if the batch is not array-like, a scalar, empty, holds NaN,
                infinite or non-integer values, is not 2-D, is longer than
                ``max_position_embeddings``, holds an id outside the vocabulary, or (with a
                pad id) has a row made only of the pad id.
        """
        padding = "" if self.pad_token_id is None else f" (left-padded with pad id {self.pad_token_id})"
        x = _check_token_ids(
            inputs, what, self.max_positions, "max_position_embeddings", self.vocab_size, padding
        )
        if self.pad_token_id is not None:
            _refuse_pad_only_rows(x, self.pad_token_id, what)
        return x

    def hook_names(self) -> list[str]:
        """Every named module of the model.

        Returns:
            Their paths (``model.layers.1.mlp``), the root module excluded.
        """
        return self._names

    def candidate_hooks(self) -> list[HookInfo]:
        """The hooks alignment searches by default (listed in the class docstring).

        Returns:
            The input embeddings (``resid_pre``, layer 0), then per block ``i`` its
            attention (``attn_out``) and ``mlp`` (``mlp_out``) where it has them and the
            block itself (``resid_post``), as ``HookInfo`` with
            ``layer = i``.
        """
        names = set(self._names)
        hooks = [HookInfo(self._embed_path, 0, "resid_pre")]
        for i in range(self.n_layers):
            block = f"{self._layers_path}.{i}"
            for suffix, component in ((self._attn[i], "attn_out"), ("mlp", "mlp_out")):
                if suffix and f"{block}.{suffix}" in names:
                    hooks.append(HookInfo(f"{block}.{suffix}", i, component))
            hooks.append(HookInfo(block, i, "resid_post"))
        return hooks

    def final_hook(self) -> str:
        """The hook whose output feeds the final norm and the unembedding.

        Returns:
            The last block (``model.layers.11``).
        """
        return f"{self._layers_path}.{self.n_layers - 1}"


def find_decoder(model: nn.Module) -> tuple[str, str]:
    """``(layers, embeddings)``: the module paths of a causal LM's list of decoder blocks
    (the module list of ``config.num_hidden_layers`` blocks, the shallowest if several)
    and of its input embeddings.

    Args:
        model: a causal language model (with ``get_input_embeddings()``).

    Returns:
        ``(layers, embeddings)``, two module paths.

    Raises:
        InputError: no input embeddings, or no such module list; the message says what
            was looked for and what was found.
    """
    modules = dict(model.named_modules())
    where = {id(m): n for n, m in modules.items()}
    getter = getattr(model, "get_input_embeddings", None)
    embed = getter() if callable(getter) else None
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [
        name
        for name, m in modules.items()
        if isinstance(m, nn.ModuleList) and len(m) and (n is None or len(m) == n)
    ]
    if embed is None or id(embed) not in where or not lists:
        found = [name for name, m in modules.items() if isinstance(m, nn.ModuleList)]
        raise InputError(
            f"HuggingFaceCausalLMAdapter needs a decoder-only language model: input embeddings "
            f"(get_input_embeddings()) and a module list of config.num_hidden_layers={n} blocks; "
            f"{type(model).__name__} has "
            f"{'input embeddings' if embed is not None else 'no input embeddings'} and "
            f"module lists {found[:4] or 'none'}. Wrap the model in your own ModelAdapter subclass instead."
        )
    return min(lists, key=_depth), where[id(embed)]


def _attention_child(block: nn.Module) -> str | None:
    """The name of a decoder block's attention module (``attn``, ``self_attn``,
    ``attention``), whose first output is the attention output; ``None`` if none."""
    for name, _ in block.named_children():
        if name in ("attn", "self_attn", "attention"):
            return name
    return None


def _refuse_pad_only_rows(x: torch.Tensor, pad_token_id: int, what: str) -> None:
    """One line for rows made only of the pad id: such a row has no token to read."""
    empty = (x == pad_token_id).all(1)
    if empty.any():
        raise InputError(
            f"{what} contain {int(empty.sum())} row(s) made only of the pad id {pad_token_id} "
            f"(first at index {int(empty.nonzero()[0])}); every row needs at least one real token."
        )
