"""The one exception type a user can cause.

Everything the library raises as `RuvonError` is a mistake in the input (unknown model, unavailable backend,
bad sampling value, prompt too long). Its message is a single sentence that says what is wrong and what would
work, so the CLI can print it as is and the server can return it as a 4xx body. Any other exception is a bug.
"""


class RuvonError(ValueError):
    """A user-facing error: the message is one complete sentence."""
