"""Amazon SES v2 ``SendEmail``: the raw MIME message, signed with AWS Signature V4 by
botocore; the delivery id as an email tag (SES events name it)."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from postbell.app.core.settings import SesSettings
from postbell.workers.channels.base import Outcome
from postbell.workers.channels.email.mime import OutgoingEmail
from postbell.workers.channels.email.transport import HttpApiTransport


class SesTransport(HttpApiTransport):
    what = "SES"

    def __init__(self, settings: SesSettings, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.settings = settings
        self.signer = SigV4Auth(
            Credentials(settings.access_key_id, settings.secret_access_key), "ses", settings.region
        )

    def request(self, message: OutgoingEmail) -> tuple[str, bytes, dict[str, str]]:
        payload = {
            "FromEmailAddress": message.from_header,
            "Destination": {"ToAddresses": [message.to_address]},
            "Content": {"Raw": {"Data": base64.b64encode(message.as_bytes()).decode()}},
            "EmailTags": [{"Name": "postbell_delivery_id", "Value": str(message.delivery_id)}],
        }
        if self.settings.configuration_set:
            payload["ConfigurationSetName"] = self.settings.configuration_set
        url = f"{self.settings.endpoint_url}/v2/email/outbound-emails"
        body = msgspec.json.encode(payload)
        signed = AWSRequest(
            method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
        )
        self.signer.add_auth(signed)
        return url, body, dict(signed.headers.items())

    def provider_id(self, headers: Any, body: bytes) -> str | None:
        try:
            value = msgspec.json.decode(body).get("MessageId")
        except (msgspec.DecodeError, AttributeError):
            return None
        return str(value) if value else None

    def error_detail(self, headers: Any, body: bytes) -> str:
        return f"{_error_type(headers)} {body.decode(errors='replace')[:250]}".strip()

    def classify(self, status: int, headers: Any, body: bytes) -> Outcome:
        if _error_type(headers) in SES_TRANSIENT:
            return Outcome.retry(f"SES {status} {self.error_detail(headers, body)}")
        return super().classify(status, headers, body)


#: SES errors that mean "not now" rather than "never" (quotas, a paused account).
SES_TRANSIENT = frozenset(
    {
        "LimitExceededException",
        "TooManyRequestsException",
        "ThrottlingException",
        "SendingPausedException",
    }
)


def _error_type(headers: Any) -> str:
    return str(headers.get("x-amzn-ErrorType", "")).split(":")[0]
