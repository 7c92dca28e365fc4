-- A claim of 256 tasks writes a lease of about 2 KB of ids, just past the
-- size where Postgres tries to compress a row, and pglz then took ~2% of the
-- whole machine's CPU in a drain. Ids compress badly and the row lives for a
-- few milliseconds, so keep leases inline and uncompressed up to a page.
ALTER TABLE leases SET (toast_tuple_target = 8160);
