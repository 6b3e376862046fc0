"""The one exception of the curvature engine.

Every error a caller can cause (a bad argument, an unsupported optimizer, mismatched shapes) is a
`CurvatureError` whose message says what to change. It subclasses `ValueError` so code that already
guards against bad values keeps working.
"""


class CurvatureError(ValueError):
    """A request the curvature engine cannot serve; the message says what to change."""
