-- Signet store on PostgreSQL, version 4 (SQLite 0006): replay-guard keys can be forgotten once
-- their window has long passed (the service sweeps keys older than twice the replay window);
-- an index by the time a key was first seen finds them.
-- Migrations run in one transaction: each index build blocks writes to its table (every
-- verification writes to both) until it commits, seconds per million keys. Upgrade a large
-- live database in a quiet moment.
CREATE INDEX replay_instructions_first_seen ON replay_instructions(first_seen);
CREATE INDEX replay_instruction_ids_first_seen ON replay_instruction_ids(first_seen);
