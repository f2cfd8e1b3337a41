"""erel-sync: GitOps for Erlang/OTP releases.

A git repository holds the desired state (Release and Group documents); a publisher signs and fans
it out over RabbitMQ; an agent on each host reconciles the real releases against it.
"""

__version__ = "0.3.0"
