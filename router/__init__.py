"""sms-router: an asyncio SMS router.

The public surface is small: `Client` to enqueue jobs, `load_settings` to read a
configuration, and the error types a caller may want to catch.
"""

from router.client import Client
from router.config import ConfigError, Settings, load_settings
from router.policy.jobs import Job, JobError

__all__ = ["Client", "ConfigError", "Job", "JobError", "Settings", "load_settings"]
__version__ = "0.1.0"
