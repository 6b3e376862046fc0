"""Models, tokenizers and per-domain token batches for sweeps.

Compute side: imports only torch, transformers, datasets, tokenizers, safetensors, numpy and
pyarrow, so it runs on a bare GPU box. Every user-fixable problem raises :class:`DataError`,
naming the sweep field and what to change.

Read in this order: ``policy`` and ``paths`` (what may be loaded), ``models`` and
``optimizer_state`` (the network), ``sources`` and ``records`` (documents), ``packing``,
``cache`` and ``batches`` (tokens). The mixture weights are checked by the curvature core
(``workers.curvature.check_weights``); the generated demo assets live in ``sharpmix.assets``.
"""

from workers.data.batches import token_batches, token_stream, training_rows
from workers.data.cache import TokenStream, tokenizer_identity
from workers.data.errors import DataError
from workers.data.models import (
    LoadedModel,
    ModelSource,
    check_model_fits,
    context_length,
    load_model,
    micro_batched_loss,
    next_token_loss,
)
from workers.data.optimizer_state import load_optimizer_state, save_optimizer_state
from workers.data.paths import resolve_local_path
from workers.data.policy import LoadPolicy
from workers.data.sources import SUPPORTED_SUFFIXES, DataSource, data_fingerprint, load_texts

__all__ = [
    "SUPPORTED_SUFFIXES",
    "DataError",
    "DataSource",
    "LoadPolicy",
    "LoadedModel",
    "ModelSource",
    "TokenStream",
    "check_model_fits",
    "context_length",
    "data_fingerprint",
    "load_model",
    "load_optimizer_state",
    "load_texts",
    "micro_batched_loss",
    "next_token_loss",
    "resolve_local_path",
    "save_optimizer_state",
    "token_batches",
    "token_stream",
    "tokenizer_identity",
    "training_rows",
]
