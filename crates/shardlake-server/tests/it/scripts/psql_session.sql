\dt
\d events
\dv
SELECT count(*) AS events FROM events;
SELECT namespace, count(*) AS n FROM events GROUP BY namespace ORDER BY namespace;
SELECT count(*) AS things FROM things;
SELECT * FROM no_such_table;
DROP TABLE events;
SELECT 'still here' AS session;
