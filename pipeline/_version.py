"""The package version, in a module of its own: the modules below the package front read it here."""

__version__ = "0.1.0"
