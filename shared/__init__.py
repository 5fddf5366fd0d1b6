"""Protocol, image codecs, configuration helpers and the client of the PSR reward service.

This package is what other projects import to call the rewards; it needs no torch.
"""

__version__ = "0.1.0"
