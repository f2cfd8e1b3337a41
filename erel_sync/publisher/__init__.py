"""The publisher: watches the config repository and publishes signed snapshots."""
