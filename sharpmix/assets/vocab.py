"""Training a small byte-level BPE tokenizer locally, for the demo model and for tests."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# A minimal chat template so chat and prompt/completion records can go through the same
# `apply_chat_template` path that real instruction-tuned tokenizers use.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int, chat_template: bool = True
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Byte-level means every string is encodable (no unknown token), which matters when a tiny
    demo tokenizer meets text it was not trained on.

    Args:
        texts: Training text, one document per item.
        vocab_size: Target vocabulary size including the special tokens.
        chat_template: Attach :data:`CHAT_TEMPLATE` as the tokenizer's chat template.

    Returns:
        A fast tokenizer with ``eos_token`` and ``pad_token`` set; ``len(tokenizer)`` is the
        vocabulary size a model built for it needs.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # untyped upstream
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    if chat_template:
        wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
