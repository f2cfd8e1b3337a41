"""The RabbitMQ family: the only package that imports aio-pika and aiormq.

`session` owns one connection's life (channels, the "broken" signal, stream consumers) and
raises only this package's errors; `messages` speaks the wire protocol over it (snapshots,
state requests, commands, heartbeats); `topology` names and declares exchanges and streams;
`setup` provisions a vhost, users and permissions; `opsclient` is the operator's client.
"""
