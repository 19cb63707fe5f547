"""Optimizer support for adapters: Riemannian preconditioning that composes with any optimizer."""
from .riemannian import RiemannianHandle, attach_riemannian

__all__ = ["RiemannianHandle", "attach_riemannian"]
