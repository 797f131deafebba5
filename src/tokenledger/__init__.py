"""tokenledger: exact metering of LLM API spend, sold as credit-based licenses."""

import os as _os

__version__ = "0.1.0"

# prometheus_client chooses its mode once, when first imported: PROMETHEUS_MULTIPROC_DIR
# (or its old lowercase name) set but empty turns on multiprocess mode with the working
# directory as the directory, and every process then leaves counter_<pid>.db and
# histogram_<pid>.db where it runs. Here, before any module imports it, empty means unset.
for _name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
    if _name in _os.environ and not _os.environ[_name].strip():
        del _os.environ[_name]
