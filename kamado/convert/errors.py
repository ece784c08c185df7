"""The one error type the converter raises for bad input; the CLI prints its message on one line."""


class ConvertError(ValueError):
    """A checkpoint that cannot be converted: missing or inconsistent files, unsupported architecture, bad config."""
