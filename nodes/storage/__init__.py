"""RocksDB storage: the key layout (store) and shard rows (shards)."""
