"""The one error type the model classes raise for bad input; the service turns it into a 4xx answer."""


class InputError(ValueError):
    """What the client sent cannot be used; the message names the field and the rule."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
