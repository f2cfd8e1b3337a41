"""The RabbitMQ family: the only package that imports aio-pika and aiormq.

`session` owns one connection's life (channels, the "broken" signal, stream consumers) and
raises only this package's errors (`errors`, each transient or not); `messages` speaks the wire
protocol over a channel (snapshots, state requests, commands, heartbeats); `topology` names and
declares exchanges and streams; `setup` provisions a vhost, users and permissions through
`rabbitctl`, the one `rabbitmqctl` runner; `opsclient` is the operator's client.
"""
