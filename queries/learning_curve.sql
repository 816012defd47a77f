-- name: learning_curve
-- description: Mean, min and max training loss per epoch of the runs named :runid
SELECT runid, tstamp, epoch,
       avg(loss) AS mean_loss, min(loss) AS min_loss, max(loss) AS max_loss,
       count(loss) AS steps
FROM history
WHERE runid = :runid
GROUP BY runid, tstamp, epoch
ORDER BY tstamp, epoch
