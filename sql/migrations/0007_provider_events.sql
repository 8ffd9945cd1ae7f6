-- 0007: provider feedback is applied once per provider event.
--
-- SendGrid, SNS and Twilio retry a callback until it is answered 2xx, and a captured
-- callback can be replayed by anyone who saw it. Each event postbell acts on is
-- recorded here by the provider's own id (SendGrid sg_event_id, SNS MessageId,
-- Twilio MessageSid:MessageStatus:ErrorCode), in the transaction that applies it: a
-- second copy finds its row and changes nothing. Rows are kept a little longer than
-- the freshness window (POSTBELL_CALLBACK_MAX_AGE_SECONDS), so a copy is either
-- still recorded here or too old to be accepted; the workers' upkeep deletes older
-- ones in small batches.
CREATE TABLE provider_events (
    provider    text NOT NULL,                      -- sendgrid | ses | twilio
    event_key   text NOT NULL,
    delivery_id bigint NOT NULL,                    -- what it was about (no FK: retention purges deliveries)
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_key)
);

-- The upkeep deletes the oldest rows first.
CREATE INDEX provider_events_received_at_idx ON provider_events (received_at);
