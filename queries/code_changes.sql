-- name: code_changes
-- description: Runs whose code differs from the previous run of the same script (new vids)
SELECT runid, tstamp, filename, left(vid, 10) AS vid,
       left(lag(vid) OVER w, 10) AS previous_vid,
       lag(runid) OVER w AS previous_runid
FROM runs
WINDOW w AS (PARTITION BY filename ORDER BY tstamp)
QUALIFY vid IS DISTINCT FROM lag(vid) OVER w
ORDER BY tstamp
