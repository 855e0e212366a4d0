"""A refused request: the status and message TF Serving answers it with, shared by every protocol."""

from __future__ import annotations

from http import HTTPStatus


class ServingError(Exception):
    """A refused request: the HTTP status and the message TF Serving gives for it."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def invalid(message: str) -> ServingError:
    return ServingError(HTTPStatus.BAD_REQUEST, message)


def not_found(message: str) -> ServingError:
    return ServingError(HTTPStatus.NOT_FOUND, message)
