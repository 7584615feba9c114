"""The logic node: channels, ids, dedup, storage and fan-out of messages; replication and live hand-over."""
