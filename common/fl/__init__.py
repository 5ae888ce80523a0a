"""The federated simulation engine (see README.md in this folder)."""
from common.fl import methods  # noqa: F401  (registers the baselines)
from common.fl.config import FLConfig
from common.fl.engine import METHODS, ClientUpdate, Federation, Method, get_method, register_method, run_federated

__all__ = ["FLConfig", "METHODS", "ClientUpdate", "Federation", "Method", "get_method", "register_method",
           "run_federated"]
