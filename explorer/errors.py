"""User-facing errors: one sentence naming the field, the bad value and what is allowed."""


class KdxError(Exception):
    """An error caused by user input or environment; the CLI prints it as one line, no traceback."""


def bad_value(field: str, value, allowed: str) -> KdxError:
    """Build the standard one-sentence error: `field`: got `value`; allowed: ..."""
    return KdxError(f"{field}: got {value!r}; {allowed}.")
