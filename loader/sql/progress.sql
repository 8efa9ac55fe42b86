-- Following progress: the delivery check of a listening connection.

-- name: progress_delivery_probe
-- Notify a listener's private channel from another session: it arrives only if notifications reach that listener.
SELECT pg_notify(%(channel)s, '');
