"""Errors of the Lambda API, in AWS's JSON form (``X-Amzn-ErrorType`` header + ``{Type, message}`` body)."""

from __future__ import annotations


class EmulatorError(RuntimeError):
    """The emulator cannot run (no Docker engine, missing base image, bad option)."""


class ApiError(Exception):
    """An error answer of the Lambda API; boto3 raises it as ``ClientError`` with ``code``."""

    def __init__(self, code: str, status: int, message: str, **extra: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.extra = extra

    def body(self) -> dict:
        # ResourceNotFoundException's shape spells it "Message"; the others "message".
        key = "Message" if self.code == "ResourceNotFoundException" else "message"
        return {"Type": "User", key: self.message, **self.extra}


def not_found(message: str) -> ApiError:
    return ApiError("ResourceNotFoundException", 404, message)


def conflict(message: str) -> ApiError:
    return ApiError("ResourceConflictException", 409, message)


def invalid(message: str) -> ApiError:
    return ApiError("InvalidParameterValueException", 400, message)


def too_large(message: str) -> ApiError:
    return ApiError("RequestEntityTooLargeException", 413, message)


def throttled(reason: str) -> ApiError:
    return ApiError("TooManyRequestsException", 429, "Rate Exceeded.", Reason=reason)
