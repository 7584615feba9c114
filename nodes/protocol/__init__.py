"""The wire protocol: frame encoding and schemas (wire), the one dispatcher, tokens (auth), heartbeat intervals."""
