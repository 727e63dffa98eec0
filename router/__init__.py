"""sms-router: an asyncio SMS router.

The public surface is small: `Client` to enqueue jobs, `load_settings` (or
`parse_settings`) to read a configuration, `open_redis` to reach the Redis it names,
and the errors a caller may want to catch, all under `RouterError`. Everything else
is the daemon's own and may change between releases.
"""

from router.client import Client
from router.config import ConfigError, Settings, load_settings, parse_settings
from router.errors import RouterError
from router.policy.jobs import Job, JobError
from router.store.connections import RedisUnavailable, open_redis

__all__ = [
    "Client",
    "ConfigError",
    "Job",
    "JobError",
    "RedisUnavailable",
    "RouterError",
    "Settings",
    "load_settings",
    "open_redis",
    "parse_settings",
]
__version__ = "0.1.0"
