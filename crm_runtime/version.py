"""The product version, from the installed package metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("open-crm")
except PackageNotFoundError:  # running from a source tree without installing
    VERSION = "0.0.0+source"
