-- name: engagements_record
-- An open (the pixel) or a click (a tracked link) of a delivery, at most one of each:
-- a repeat changes nothing. Answers 1 when it was the first.
INSERT INTO delivery_engagements (delivery_id, kind)
SELECT d.id, %(kind)s FROM deliveries AS d WHERE d.id = %(id)s
    ON CONFLICT DO NOTHING

-- name: experiment_stats
-- GET /api/experiments/{key}: the view's rows of one experiment, the first variant
-- first, then in name order.
SELECT variant, metric, sent, n, rate, is_first, diff, ci_low, ci_high, z, p_value
  FROM experiment_stats
 WHERE experiment = %(key)s
 ORDER BY NOT is_first, variant, metric
