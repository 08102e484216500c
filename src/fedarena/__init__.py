"""fedarena: global vs personalized federated learning, measured on identical seeded clients."""

__version__ = "0.1.0"
