-- name: best_epoch
-- description: The epoch with the highest accuracy in each run, best runs first
SELECT runid, tstamp, left(vid, 10) AS vid,
       arg_max(epoch, accuracy) AS best_epoch,
       max(accuracy) AS best_accuracy
FROM history
WHERE accuracy IS NOT NULL
GROUP BY runid, tstamp, vid
ORDER BY best_accuracy DESC, tstamp
