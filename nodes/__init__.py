"""imesh: a distributed instant-messaging backend built as a ZeroMQ mesh of node processes."""
__version__ = "0.1.0"
