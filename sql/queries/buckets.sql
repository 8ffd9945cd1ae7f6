-- name: buckets_ensure
INSERT INTO provider_buckets (channel, tokens) VALUES (%(channel)s, %(burst)s)
    ON CONFLICT (channel) DO NOTHING

-- name: buckets_take
-- Take up to %(want)s tokens from a channel's bucket, refilled at %(rate)s per second
-- up to %(burst)s. The row lock makes it one bucket for every worker process.
WITH current AS (
    SELECT channel,
           least(%(burst)s::double precision,
                 tokens + extract(epoch FROM clock_timestamp() - updated_at) * %(rate)s) AS available
      FROM provider_buckets
     WHERE channel = %(channel)s
       FOR UPDATE
)
UPDATE provider_buckets AS b
   SET tokens = c.available - least(%(want)s, floor(c.available)),
       updated_at = clock_timestamp()
  FROM current AS c
 WHERE b.channel = c.channel
RETURNING least(%(want)s, floor(c.available))::integer AS granted, c.available
