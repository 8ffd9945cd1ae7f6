"""Fixtures of the provider-callback tests: the signers and an API that trusts them."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.app.core.settings import Settings
from tests.conftest import api_client
from tests.peers.sns import DEFAULT_TOPIC_ARN, SendGridEventSigner, SnsSigner


@pytest.fixture(scope="module")
def sendgrid_signer() -> SendGridEventSigner:
    return SendGridEventSigner()


@pytest.fixture(scope="module")
def sns() -> Iterator[SnsSigner]:
    peer = SnsSigner()
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def callback_settings(
    settings: Settings, sendgrid_signer: SendGridEventSigner, sns: SnsSigner
) -> Settings:
    """The session's settings plus what verifies the signers: SendGrid's key, the SNS
    peer as the one certificate host allowed besides Amazon's, and the trusted topic."""
    return dataclasses.replace(
        settings,
        sendgrid_webhook_key=sendgrid_signer.public_key_b64,
        sns_cert_url_prefixes=(sns.url + "/",),
        sns_topic_arns=(DEFAULT_TOPIC_ARN,),
    )


@pytest.fixture(scope="module")
async def callbacks(callback_settings: Settings, pool: db.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The API with the callbacks' verification settings (same database as the worker)."""
    async with api_client(create_app(callback_settings, pool=pool)) as client:
        yield client
