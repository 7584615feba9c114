"""The socket runtime every node stands on: the Node base and its loop, outbox, request/reply
(rpc), CURVE, session tables, links, logs, metrics."""
