# -*- test-case-name: tests.test_spool -*-
"""
The envelope of a queued message, stored beside its data as JSON.

JSON keeps the spool readable by an operator (and by C{jq}), and unlike
pickle it cannot run code when a queue file is loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Envelope:
    """
    Everything the relay manager needs besides the message data.

    @ivar sender: the reverse path without brackets, C{""} for the null
        sender.
    @ivar recipients: the forward paths without brackets, in RCPT order.
    @ivar user: the authenticated user who submitted the message.
    @ivar received: when the message was accepted, seconds since the epoch.
    @ivar body: C{"7BIT"} or C{"8BITMIME"}, from MAIL's BODY= parameter.
    @ivar client: the client's address as the log shows it.
    @ivar size: the size of the stored data in octets, once known.
    """

    sender: str
    recipients: tuple[str, ...]
    user: str
    received: float
    body: str = "7BIT"
    client: str = ""
    size: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def toJSON(self) -> bytes:
        """
        @return: the envelope as a UTF-8 JSON document.
        """
        document = {"version": FORMAT_VERSION, **asdict(self)}
        document["recipients"] = list(self.recipients)
        return json.dumps(document, indent=1, sort_keys=True).encode()

    @classmethod
    def fromJSON(cls, data: bytes) -> Envelope:
        """
        Read an envelope written by L{toJSON}.

        @raise ValueError: when C{data} is not such a document.
        """
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("an envelope is a JSON object")
        if document.pop("version", None) != FORMAT_VERSION:
            raise ValueError("unknown envelope format version")
        try:
            document["recipients"] = tuple(document["recipients"])
            return cls(**document)
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed envelope: {error}") from None
