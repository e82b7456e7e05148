"""User-facing errors: one sentence naming the field, the bad value and what is allowed."""


class KdxError(Exception):
    """An error caused by user input or environment; the CLI prints it as one line, no traceback."""


def bad_value(field: str, value, allowed: str) -> KdxError:
    """Build the standard one-sentence error: `field`: got `value`; allowed: ..."""
    return KdxError(f"{field}: got {value!r}; {allowed}.")


def pydantic_sentence(err, prefix: str = "") -> str:
    """The first problem of a pydantic `ValidationError` as the standard sentence: field, value, what is
    allowed. `prefix` ("dataset.") names the section the model sits in."""
    e = err.errors()[0]
    loc = prefix + ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
    value = e.get("input")
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key; check the spelling against searches/quickstart.yaml."
    if e["type"] == "missing":
        return f"{loc}: missing; this field is required."
    msg = e["msg"].removeprefix("Value error, ")
    if not msg.startswith("allowed") and e["type"] not in ("value_error",):
        msg = f"allowed: {msg[0].lower()}{msg[1:]}"
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    return f"{loc}: got {shown}; {msg.rstrip('.')}."
