-- Signet store, version 6: replay-guard keys can be forgotten once their window has long
-- passed (the service sweeps keys older than twice the replay window). An index by the time a
-- key was first seen finds them without reading the tables. Its entries arrive in time order,
-- so a commit adds them to the same few pages at the end of the index.
CREATE INDEX replay_instructions_first_seen ON replay_instructions(first_seen);
CREATE INDEX replay_instruction_ids_first_seen ON replay_instruction_ids(first_seen);
