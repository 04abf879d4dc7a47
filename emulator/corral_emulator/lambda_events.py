"""Asynchronous (``Event``) invocations: their queue, retries and event invoke configs, as Lambda has them.

A function error (the code's, or the runtime's: a timeout, out of memory) is retried
``MaximumRetryAttempts`` times (default 2), after ``retry_delay`` and then twice that (Lambda waits one
minute, then two). Throttling and the emulator's own errors put the event back in the queue with a
growing backoff. An event older than ``MaximumEventAgeInSeconds`` (default 6 hours) is discarded,
whatever step it is at; so is one whose function was deleted. Each discarded event is logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral_emulator.errors import ApiError, invalid
from corral_emulator.functions import int_in

if TYPE_CHECKING:
    from corral_emulator.lambda_service import LambdaService

log = logging.getLogger("corral_emulator")

DEFAULT_RETRY_ATTEMPTS = 2
DEFAULT_MAX_AGE = 21600  # seconds (6 hours)
MIN_MAX_AGE = 60
THROTTLE_BACKOFF = (0.05, 2.0)  # the first wait and the longest one between attempts to find capacity


@dataclass
class EventInvokeConfig:
    """One qualifier's (``$LATEST``, a version or an alias) error handling of asynchronous invocations."""

    function_arn: str
    maximum_retry_attempts: int = DEFAULT_RETRY_ATTEMPTS
    maximum_event_age: int = DEFAULT_MAX_AGE
    last_modified: float = field(default_factory=time.time)
    explicit: set[str] = field(default_factory=set)  # the fields the user set (the shape omits the others)

    def update(self, body: dict, *, replace: bool) -> None:
        """Put (``replace``: what the body omits goes back to its default) or update (merge) the config;
        nothing changes when the body is not valid."""
        destinations = body.get("DestinationConfig")
        if destinations and any(destinations.get(k) for k in ("OnSuccess", "OnFailure")):
            raise invalid("corral-emulator does not deliver to destinations (DestinationConfig); "
                          "it logs each discarded event instead")
        retries, max_age, explicit = ((DEFAULT_RETRY_ATTEMPTS, DEFAULT_MAX_AGE, set()) if replace else
                                      (self.maximum_retry_attempts, self.maximum_event_age, set(self.explicit)))
        if body.get("MaximumRetryAttempts") is not None:
            retries = int_in(body["MaximumRetryAttempts"], "maximumRetryAttempts", 0, 2)
            explicit.add("MaximumRetryAttempts")
        if body.get("MaximumEventAgeInSeconds") is not None:
            max_age = int_in(body["MaximumEventAgeInSeconds"], "maximumEventAgeInSeconds", MIN_MAX_AGE,
                             DEFAULT_MAX_AGE)
            explicit.add("MaximumEventAgeInSeconds")
        self.maximum_retry_attempts, self.maximum_event_age, self.explicit = retries, max_age, explicit
        self.last_modified = time.time()

    def shape(self) -> dict:
        """The FunctionEventInvokeConfig shape."""
        data: dict[str, Any] = {"LastModified": self.last_modified, "FunctionArn": self.function_arn,
                                "DestinationConfig": {"OnSuccess": {}, "OnFailure": {}}}
        if "MaximumRetryAttempts" in self.explicit:
            data["MaximumRetryAttempts"] = self.maximum_retry_attempts
        if "MaximumEventAgeInSeconds" in self.explicit:
            data["MaximumEventAgeInSeconds"] = self.maximum_event_age
        return data


@dataclass
class Event:
    name: str
    qualifier: str | None
    payload: bytes
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    received: float = field(default_factory=time.monotonic)
    attempts: int = 0


class EventQueue:
    """Runs a service's asynchronous invocations in the background, with Lambda's retries."""

    def __init__(self, service: LambdaService, retry_delay: float) -> None:
        self.service = service
        self.retry_delay = retry_delay

    def submit(self, name: str, qualifier: str | None, payload: bytes) -> str:
        event = Event(name, qualifier, payload)
        self.service.engine.spawn(self._run(event))
        return event.request_id

    def _config(self, event: Event) -> EventInvokeConfig | None:
        function = self.service.functions.get(event.name)
        return None if function is None else function.event_configs.get(event.qualifier or "$LATEST")

    def _discard(self, event: Event, why: str) -> None:
        log.warning("event %s for %s%s discarded after %d attempt%s: %s", event.request_id, event.name,
                    f":{event.qualifier}" if event.qualifier else "", event.attempts,
                    "" if event.attempts == 1 else "s", why)

    async def _wait(self, event: Event, seconds: float) -> bool:
        """Sleep ``seconds`` unless the event would be past its maximum age by then (discarded: False)."""
        config = self._config(event)
        max_age = config.maximum_event_age if config else DEFAULT_MAX_AGE
        if time.monotonic() + seconds - event.received > max_age:
            self._discard(event, f"older than MaximumEventAgeInSeconds ({max_age} s) by its next attempt")
            return False
        await asyncio.sleep(seconds)
        return True

    async def _run(self, event: Event) -> None:
        service = self.service
        backoff = THROTTLE_BACKOFF[0]
        while not service.engine.closing:
            try:
                function, version, invoked_arn = service.resolve(event.name, event.qualifier)
            except ApiError:
                self._discard(event, "the function or its qualifier no longer exists")
                return
            try:
                result = await service.invoke(function, version, invoked_arn, event.payload,
                                              request_id=event.request_id, invocation_type="Event")
            except ApiError as exc:
                if exc.status != 429 and exc.status < 500:
                    self._discard(event, exc.message)
                    return
                # throttled, or the emulator could not run it: back in the queue (not a function error)
                if not await self._wait(event, backoff * (1 + random.random())):
                    return
                backoff = min(backoff * 2, THROTTLE_BACKOFF[1])
                continue
            event.attempts += 1
            if not result.outcome.function_error:
                return
            config = self._config(event)
            retries = config.maximum_retry_attempts if config else DEFAULT_RETRY_ATTEMPTS
            if event.attempts > retries:
                self._discard(event, f"{result.outcome.error_type or 'function error'} on every attempt "
                                     f"(MaximumRetryAttempts {retries})")
                return
            log.info("event %s for %s failed with %s; retry %d of %d in %g s", event.request_id, event.name,
                     result.outcome.error_type, event.attempts, retries, self.retry_delay * event.attempts)
            if not await self._wait(event, self.retry_delay * event.attempts):
                return
