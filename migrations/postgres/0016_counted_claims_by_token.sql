-- Each counted claim carries its claim's token, which every completion of
-- its tasks carries too: a completion finds the rows holding its tasks by
-- their tokens, instead of testing every row's tasks against its batch (an
-- array overlap, each task against each: a millisecond a completion with a
-- few hundred runs counted). Rows written before have none, and are still
-- found by their tasks.
ALTER TABLE counted_claims ADD COLUMN token bigint;
