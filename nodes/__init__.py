"""imesh: a distributed instant-messaging backend built as a ZeroMQ mesh of node processes."""
import os

__version__ = "0.1.0"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))   # nodes/: package data (clients, config) is found from here
