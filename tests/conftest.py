"""Test-wide plugins: the private RabbitMQ node fixtures live in `tests.rabbit`."""

pytest_plugins = ["tests.rabbit"]
