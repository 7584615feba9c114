"""The cluster: topology files and their live changes, rendezvous hashing, who owns or leads a
channel, id coordination, per-IDC fan-out."""
