"""The releases on one host: the only package that starts Erlang nodes and calls them.

`driver` installs, starts, stops, upgrades, observes and deletes releases; `upgrader` runs the
hot and restart upgrade paths (through the driver's narrow `ReleaseHost` protocol); `nodeops`
the node steps (the per-tick probe, boot, wait ready, probation, halt);
`erlcall` the RPC to a node; `nodeproc` the OS processes; `files`, `meta`, `artifacts` and
`archive` the release root on disk, its record, the verified tarballs and their extraction.
"""
