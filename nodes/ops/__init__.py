"""Operator tools: admin client, local mesh supervision, local etcd, resharding."""
