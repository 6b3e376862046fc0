"""The one exception the data package raises for anything a user can fix."""

from __future__ import annotations


class DataError(ValueError):
    """A model or data reference in a sweep cannot be used as given.

    Every instance names the sweep field at fault and says what to change, so the service can show
    it next to the form field (or in the job's error) without rewording it.

    Attributes:
        field: Dotted name of the sweep field at fault, e.g. ``"pretraining.path"``,
            ``"seq_len"`` or ``"model.path"``. For a data domain the prefix is the domain's name
            (or the ``field`` the caller passed).
        message: What is wrong and what to do about it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
