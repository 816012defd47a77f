-- name: args_vs_final_metric
-- description: Each run's hyper-parameters beside its final-epoch accuracy, best first
SELECT runid, tstamp, lr, hidden, batch_size, epochs,
       arg_max(accuracy, epoch) AS final_accuracy
FROM history
GROUP BY ALL
ORDER BY final_accuracy DESC NULLS LAST, tstamp
