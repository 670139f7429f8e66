"""LightningModules: how nets are trained and measured, independent of how they are configured."""

from fakedetect.modules.detector import Detector

__all__ = ["Detector"]
