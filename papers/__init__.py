"""Paper replications; one sub-package per paper."""
