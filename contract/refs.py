"""What a sweep measures on: the model (:class:`ModelRef`) and its data sets (:class:`DataRef`,
the pre-training sources :class:`PretrainingRef`, the fine-tuning sets :class:`FinetuneRef`), each
a local path under the allowed roots or a hub id; and the :class:`Role` of an evaluation set.

The mix bounds the data sets carry for k-domain mixes come from ``contract.mix``.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from contract.mix import MixBounds, PretrainingMix
from contract.quantities import PositiveFloat

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Role(enum.StrEnum):
    """What an evaluation set is in the sweep; a plain string on the wire and in the database."""

    pretraining = "pretraining"
    finetuning = "finetuning"
    retention = "retention"
    target = "target"


# The roles whose loss must stay flat: the answer is judged on them.
RETENTION_ROLES = (Role.pretraining, Role.retention)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The one-of rule of `path` and `hub_id`, stated in the schema too (the validators enforce it):
# exactly one of them is a string, the other absent or null.
_PATH_OR_HUB_ID: JsonDict = {
    "oneOf": [
        {
            "required": ["path"],
            "properties": {"path": {"type": "string"}, "hub_id": {"type": "null"}},
        },
        {
            "required": ["hub_id"],
            "properties": {"hub_id": {"type": "string"}, "path": {"type": "null"}},
        },
    ]
}


class ModelRef(_Strict):
    """A causal LM: a local directory (under the allowed roots) or a hub id with a revision."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_PATH_OR_HUB_ID)

    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Local Hugging Face model directory (safetensors weights), absolute or "
        "relative to an allowed root (SHARPMIX_ALLOWED_ROOTS).",
        examples=["models/olmo2-1b"],
    )
    hub_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Hugging Face hub id, instead of 'path' (refused when the server is offline).",
        examples=["allenai/OLMo-2-0425-1B"],
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Hub revision (branch, tag or commit) to pin 'hub_id' to.",
    )
    optimizer_state: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Local safetensors file with AdamW moments, for the direction with state.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of 'path' (a local directory) or 'hub_id'")
        if self.revision is not None and self.hub_id is None:
            raise ValueError("'revision' goes with 'hub_id'; a local 'path' has no revision")
        return self


class DataRef(_Strict):
    """One data set: local file or directory (jsonl, json, parquet, csv, txt) or a hub data set."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_PATH_OR_HUB_ID)

    name: Name = Field(
        description="Short unique name of the set; results and plots are labelled with it.",
        examples=["general"],
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Local jsonl, json, parquet, csv or txt file, or a directory of them, "
        "absolute or relative to an allowed root.",
        examples=["data/dclm-sample"],
    )
    hub_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Hugging Face data set id, instead of 'path'.",
    )
    config: str | None = Field(
        default=None, max_length=256, description="The hub data set's configuration name."
    )
    split: str = Field(
        default="train", min_length=1, max_length=64, description="The split to read."
    )
    text_field: str = Field(
        default="text",
        min_length=1,
        max_length=128,
        description="Column holding the text (prompt/completion and chat records are read too).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataRef:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of 'path' (a local file or directory) or 'hub_id'")
        return self


class PretrainingRef(DataRef, PretrainingMix):
    """The pre-training (reference) set: the replay data of a mix, and a loss to keep flat; one
    of several sources when ``pretraining`` is a list (``weight``, ``min``, ``max``, ``share``
    come from ``contract.mix``)."""

    within_tolerance: bool = Field(
        default=True,
        description="Whether this set's drift must stay within the tolerance. Set false when "
        "the model was trained on these very documents: their drift also counts lost "
        "memorisation, several times the drift of unseen text of the same kind; then give a "
        "held-out sample as a retention set, which is always guarded.",
    )


class FinetuneRef(DataRef, MixBounds):
    """A fine-tuning data set; several are mixed by their weights (bounds from ``contract.mix``
    for ``mixes`` and ``mix_search``)."""

    weight: PositiveFloat = Field(
        default=1.0, description="Share of this set among the fine-tuning sets (normalised)."
    )


__all__ = [
    "RETENTION_ROLES",
    "DataRef",
    "FinetuneRef",
    "ModelRef",
    "Name",
    "PretrainingRef",
    "Role",
]
