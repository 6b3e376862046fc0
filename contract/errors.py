"""The contract's one exception root.

The contract is read on both sides of the queue, so its errors carry no HTTP status and no job
state: the API turns them into its own ``InvalidRequestError`` (a 422), the data loaders into
``DataError`` (a failed task); both keep the field and the message word for word.
"""

from __future__ import annotations


class ContractError(ValueError):
    """A value of a sweep breaks a rule of the contract.

    Attributes:
        field: Dotted name of the field at fault, as the user wrote it (``"finetuning[0].path"``).
        message: What is wrong and what to change.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class LimitError(ContractError):
    """A size of the sweep is above the operator's limit."""


class PathError(ContractError):
    """A local path of the sweep is unusable: outside the allowed roots, climbing, or missing."""
