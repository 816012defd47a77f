-- name: runs_above_lr
-- description: Runs trained with a learning rate above :lr, with their best accuracy
SELECT runid, tstamp, lr, hidden, max(accuracy) AS best_accuracy
FROM history
WHERE lr > :lr
GROUP BY ALL
ORDER BY best_accuracy DESC, tstamp
