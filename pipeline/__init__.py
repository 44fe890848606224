"""segment-wigzo: a Kafka consumer group that delivers Segment events to Wigzo."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segment-wigzo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
