"""Turning dataset records into plain text documents: text, chat, or prompt/completion."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from workers.data.errors import DataError

MESSAGES_FIELD = "messages"
PROMPT_FIELD = "prompt"
COMPLETION_FIELD = "completion"


class RecordKind(enum.Enum):
    """How a record becomes a document."""

    TEXT = "text"  # the text field, as is
    CHAT = "chat"  # a list of {"role", "content"} messages
    PROMPT_COMPLETION = "prompt_completion"  # a user prompt and the assistant's completion


def record_kind(columns: Sequence[str], text_field: str, *, field: str) -> RecordKind:
    """Decide how to read records with these columns.

    The text field wins when present; otherwise ``messages`` means chat, and ``prompt`` plus
    ``completion`` means an instruction pair.

    Args:
        columns: Column names of the dataset.
        text_field: The sweep's text field (default ``"text"``).
        field: Sweep field prefix of the domain, for errors.

    Raises:
        DataError: When none of these is present; the message lists the columns found.
    """
    if text_field in columns:
        return RecordKind.TEXT
    if MESSAGES_FIELD in columns:
        return RecordKind.CHAT
    if PROMPT_FIELD in columns and COMPLETION_FIELD in columns:
        return RecordKind.PROMPT_COMPLETION
    present = ", ".join(sorted(columns)) or "none"
    raise DataError(
        f"{field}.text_field",
        f"records have no '{text_field}' field (fields present: {present}); set text_field to "
        f"the field holding the text, or give '{MESSAGES_FIELD}' (chat) or "
        f"'{PROMPT_FIELD}' + '{COMPLETION_FIELD}' records",
    )


def records_to_texts(
    batch: dict[str, list[Any]],
    kind: RecordKind,
    text_field: str,
    tokenizer: PreTrainedTokenizerBase | None,
) -> list[str]:
    """Turn a batch of records (column -> values, as ``datasets.map`` gives) into documents.

    Chat and prompt/completion records go through the tokenizer's chat template when it has one,
    so the text matches what the model sees in fine-tuning. Without a template they are joined
    plainly: each message as ``"<role>: <content>"`` on its own line, and a prompt/completion as
    ``prompt + "\\n" + completion``. Missing values become empty documents, dropped later.

    Args:
        batch: Columns of a batch of records.
        kind: From :func:`record_kind`.
        text_field: Column holding the text for ``RecordKind.TEXT``.
        tokenizer: Supplies the chat template; ``None`` means the plain join.

    Returns:
        One document per record.
    """
    if kind is RecordKind.TEXT:
        return [value if isinstance(value, str) else "" for value in batch[text_field]]
    if kind is RecordKind.CHAT:
        conversations = [list(messages or []) for messages in batch[MESSAGES_FIELD]]
    else:
        conversations = [
            [
                {"role": "user", "content": prompt or ""},
                {"role": "assistant", "content": completion or ""},
            ]
            for prompt, completion in zip(batch[PROMPT_FIELD], batch[COMPLETION_FIELD], strict=True)
        ]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return [_templated(tokenizer, conversation) for conversation in conversations]
    if kind is RecordKind.PROMPT_COMPLETION:
        return [f"{c[0]['content']}\n{c[1]['content']}" for c in conversations]
    return [
        "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in conversation)
        for conversation in conversations
    ]


def _templated(tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, Any]]) -> str:
    if not conversation:
        return ""
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert isinstance(text, str)  # tokenize=False returns the rendered string
    return text
