-- 0028: a big topic's fan-out runs its chunks side by side (issue 19, W9).
--
-- Until now a topic notification was routed one chunk after another, its progress
-- one number (notifications.routed_through): a 1,000,000-member topic kept one
-- Postgres backend busy for half a minute while the other cores idled. A router now
-- first splits the members still to route into ranges of one chunk each, stored
-- here, and then routes them from several connections at once: each chunk locks its
-- range (FOR UPDATE SKIP LOCKED, so no two take the same one), routes the members
-- in it in one transaction, and records the range done in that same transaction. A
-- crash loses no range and repeats none that committed: the rerun of the routing job
-- finds the ranges and routes the ones not done. With the last range done, the
-- notification is marked routed and its ranges deleted, in one transaction.
--
-- A range is the members with lo < recipient_id <= hi (hi NULL: no upper bound, the
-- last range, which also takes members who subscribe during the fan-out with a
-- larger id); routed_through is how far in it routing got.

CREATE TABLE topic_ranges (
    notification_id uuid   NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    lo              bigint NOT NULL,
    hi              bigint,
    routed_through  bigint NOT NULL,
    done            boolean NOT NULL DEFAULT false,
    PRIMARY KEY (notification_id, lo),
    CHECK (hi IS NULL OR hi > lo),
    CHECK (routed_through >= lo)
);
