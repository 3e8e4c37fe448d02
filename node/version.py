"""The installed onebyte version (package metadata), for --version, status and metrics.

Read without importing anything heavy: client commands print it in milliseconds."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("onebyte")
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "unknown"
