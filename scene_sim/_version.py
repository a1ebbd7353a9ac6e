"""The package version, in one place (imported by run records without importing the package API)."""

__version__ = "0.1.0"
