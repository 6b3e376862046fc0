"""Loading a causal LM and its tokenizer from a local directory or the hub, safely."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from workers.data.errors import DataError
from workers.data.optimizer_state import load_optimizer_state
from workers.data.paths import resolve_local_path
from workers.data.policy import LoadPolicy

log = logging.getLogger(__name__)

# Pickle-based checkpoint formats: loading them runs arbitrary code, so we refuse them.
_UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ModelSource:
    """Where a sweep's model comes from; exactly one of ``path`` and ``hub_id``.

    Attributes:
        path: Local directory written by ``save_pretrained`` (under an allowed root).
        hub_id: Hub repository id, e.g. ``"allenai/OLMo-2-0425-1B"``.
        revision: Hub revision (branch, tag or commit); pin a commit for reproducible sweeps.
        optimizer_state: Local file with AdamW state for the model's parameters, in the layout
            of :mod:`workers.data.optimizer_state`; without it the worker uses fresh AdamW.
    """

    path: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    optimizer_state: str | None = None


@dataclass
class LoadedModel:
    """A model ready for the curvature engine.

    Attributes:
        model: The causal LM in ``eval()`` mode, on the requested device and dtype.
        tokenizer: Its tokenizer; ``eos_token_id`` is set (packing needs it).
        context_length: Longest sequence the model's positions support, when the config says.
        optimizer_state: AdamW state keyed as in :mod:`workers.data.optimizer_state`, fp32 on the
            model's device, or ``None`` for a fresh optimizer.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    context_length: int | None
    optimizer_state: dict[str, torch.Tensor] | None


def load_model(
    src: ModelSource,
    policy: LoadPolicy,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seq_len: int | None = None,
) -> LoadedModel:
    """Load model, tokenizer and optional optimizer state for a sweep.

    Config and tokenizer are read first, so a ``seq_len`` above the context or a vocabulary
    mismatch fails before any weights are read or moved to the GPU.

    Args:
        src: The model reference from the sweep.
        policy: The operator's loading policy.
        dtype: Parameter dtype.
        device: Device to put the model (and optimizer state) on.
        seq_len: When given, checked against the model with :func:`check_model_fits`.

    Returns:
        The loaded model, tokenizer, context length and optimizer state.

    Raises:
        DataError: For a bad reference, unsafe weights, remote code not allowed, an unreachable
            hub id, a model that does not fit ``seq_len`` or its tokenizer, or bad optimizer
            state.
    """
    location = _locate(src, policy)
    config = _load_config(location, policy)
    tokenizer = _load_tokenizer(location, policy)
    if seq_len is not None:
        check_model_fits(config, tokenizer, seq_len=seq_len)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location.target,
            config=config,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=policy.trust_remote_code,
            **location.hub_kwargs(),
        )
    except (OSError, ValueError) as exc:
        raise DataError(
            location.field,
            f"could not load safetensors weights from '{location.target}': {exc}",
        ) from exc
    # Through nn.Module: transformers wraps `.to` in a decorator that hides its signature.
    module: torch.nn.Module = model
    module.to(device)
    module.eval()  # curvature is measured without dropout; see method.md §2 "Precision"
    optimizer_state = None
    if src.optimizer_state is not None:
        state_path = resolve_local_path(
            src.optimizer_state, policy.allowed_roots, field="model.optimizer_state"
        )
        optimizer_state = load_optimizer_state(state_path, model, device=device)
    return LoadedModel(model, tokenizer, context_length(config), optimizer_state)


def context_length(config: PretrainedConfig) -> int | None:
    """Longest sequence ``config``'s position embeddings support, or ``None`` if unstated.

    Args:
        config: A model config; multimodal configs are reduced to their text config.

    Returns:
        ``max_position_embeddings`` (Llama, OLMo, Qwen) or ``n_positions`` (GPT-2).
    """
    text_config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def next_token_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """Mean next-token loss (float32) of a causal LM on a (sequences, seq_len) batch of ids.

    transformers shifts the labels and averages over ``sequences * (seq_len - 1)`` tokens.
    """
    loss: Tensor = model(input_ids=tokens, labels=tokens).loss
    return loss.float()


def micro_batched_loss(model: nn.Module, batch: Tensor, micro_batch: int) -> Tensor:
    """`next_token_loss` of a batch too large for one forward, in micro-batches of equal size.

    Each micro-batch's mean is weighted by its sequences, so the result is the batch's mean.
    """
    total = torch.zeros((), dtype=torch.float32, device=batch.device)
    for chunk in torch.split(batch, micro_batch):
        # (b, T) -> scalar
        total = total + next_token_loss(model, chunk) * len(chunk)
    return total / len(batch)


def check_model_fits(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, *, seq_len: int
) -> None:
    """Check that ``seq_len`` and the tokenizer fit the model, before any GPU work.

    Args:
        config: The model's config (``model.config`` of a loaded model works too).
        tokenizer: The tokenizer that will produce the batches.
        seq_len: Tokens per sequence the sweep asks for.

    Raises:
        DataError: ``seq_len`` not positive or above the context length (field ``seq_len``); no
            EOS token, or tokenizer ids the embedding cannot look up (field ``model.path``).
    """
    if seq_len < 2:
        raise DataError("seq_len", f"seq_len is {seq_len}; use at least 2 tokens per sequence")
    limit = context_length(config)
    if limit is not None and seq_len > limit:
        raise DataError(
            "seq_len", f"seq_len {seq_len} is above the model's context length {limit}; lower it"
        )
    if tokenizer.eos_token_id is None:
        raise DataError(
            "model.path",
            "the tokenizer has no EOS token, which packing puts between documents; "
            "save the tokenizer with eos_token set",
        )
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        raise DataError(
            "model.path",
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has only "
            f"{vocab_size} rows; use the tokenizer the model was trained with",
        )
    if isinstance(vocab_size, int) and len(tokenizer) < vocab_size // 2:
        # Padded vocabularies are normal (OLMo-2: 100278 tokens, 100352 rows); half is not.
        log.warning(
            "tokenizer has %d tokens for a %d-row embedding; is it the model's own tokenizer?",
            len(tokenizer),
            vocab_size,
        )


@dataclass(frozen=True)
class _Location:
    """What to pass to ``from_pretrained``, and which sweep field to blame if it fails."""

    target: str
    field: str
    revision: str | None = None

    def hub_kwargs(self) -> dict[str, Any]:
        if self.field == "model.path":
            # A local directory must never silently turn into a hub lookup.
            return {"local_files_only": True}
        return {"revision": self.revision} if self.revision is not None else {}


def _locate(src: ModelSource, policy: LoadPolicy) -> _Location:
    if (src.path is None) == (src.hub_id is None):
        raise DataError("model", "give exactly one of model.path and model.hub_id")
    if src.path is not None:
        if src.revision is not None:
            raise DataError("model.revision", "a revision only applies to hub ids; remove it")
        directory = resolve_local_path(src.path, policy.allowed_roots, field="model.path")
        _check_local_weights(directory)
        return _Location(str(directory), "model.path")
    assert src.hub_id is not None
    if policy.offline:
        raise DataError(
            "model.hub_id",
            f"this server is offline (SHARPMIX_OFFLINE), so hub id '{src.hub_id}' cannot be "
            "fetched; download the model under an allowed root and use model.path",
        )
    return _Location(src.hub_id, "model.hub_id", src.revision)


def _check_local_weights(directory: Path) -> None:
    if not directory.is_dir():
        raise DataError(
            "model.path", f"{directory} is a file; give the directory written by save_pretrained"
        )
    if not (directory / "config.json").is_file():
        raise DataError(
            "model.path", f"{directory} has no config.json; give a save_pretrained directory"
        )
    if any(directory.glob("*.safetensors")):
        return
    unsafe = sorted(p.name for p in directory.iterdir() if p.suffix in _UNSAFE_WEIGHT_SUFFIXES)
    if unsafe:
        raise DataError(
            "model.path",
            f"unsafe weights format ({', '.join(unsafe)}: pickle, which can run code); "
            "convert to safetensors, e.g. load it once yourself and call "
            "save_pretrained(dir, safe_serialization=True)",
        )
    raise DataError("model.path", f"{directory} has no *.safetensors weights")


def _load_config(location: _Location, policy: LoadPolicy) -> PretrainedConfig:
    try:
        config: PretrainedConfig = AutoConfig.from_pretrained(
            location.target, trust_remote_code=policy.trust_remote_code, **location.hub_kwargs()
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise DataError(
                location.field,
                "this model needs custom code from its repository, which this server does not "
                "run; use a model supported by transformers, or ask the operator to allow "
                "remote code",
            ) from exc
        raise DataError(
            location.field, f"cannot read the config of '{location.target}': {exc}"
        ) from exc
    except OSError as exc:
        raise DataError(
            location.field,
            f"cannot fetch '{location.target}' (offline, no access, or no such "
            f"repository/revision): {exc}; check the id and revision, or download it and use "
            "model.path",
        ) from exc
    return config


def _load_tokenizer(location: _Location, policy: LoadPolicy) -> PreTrainedTokenizerBase:
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            location.target, trust_remote_code=policy.trust_remote_code, **location.hub_kwargs()
        )
    except (OSError, ValueError) as exc:
        raise DataError(
            location.field,
            f"cannot load a tokenizer from '{location.target}': {exc}; save it beside the model",
        ) from exc
    return tokenizer
