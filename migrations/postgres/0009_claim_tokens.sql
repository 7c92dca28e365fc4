-- Every claim carries a random fencing token, and a completion writes only
-- under its claim's token. Claims commit asynchronously (a durable commit per
-- claim cost the drain about a third), so a crash can make the database
-- forget a claim whose tasks are already running; the same attempt is then
-- handed out again, and the attempt number can no longer tell the two runs
-- apart. Rows claimed before this migration have no token; the workers
-- that claimed them still write by attempt, as they always did.
ALTER TABLE tasks ADD COLUMN claim_token bigint;
