"""Adapters: the only modules that touch git, the broker, the disk, processes and the network."""
