"""The sync agent: stores snapshots, matches its group and reconciles releases."""
