"""The one error type of the service: an HTTP status and a message, answered as JSON ``{"error": message}``."""


class ApiError(Exception):
    """A request the service refuses, with its HTTP ``status`` and extra response ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
