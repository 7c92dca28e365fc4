-- Every claim carries a random fencing token, and a completion writes only
-- under its claim's token, as in the Postgres store. Rows claimed before this
-- migration have no token; the workers that claimed them still write by
-- attempt, as they always did.
ALTER TABLE tasks ADD COLUMN claim_token INTEGER;
