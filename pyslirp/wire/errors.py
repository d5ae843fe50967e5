"""The one exception the wire parsers raise."""


class ParseError(ValueError):
    """Malformed input. ``reason`` is a short token used as a counter name."""

    def __init__(self, reason, detail=""):
        self.reason = reason
        self.detail = detail
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
