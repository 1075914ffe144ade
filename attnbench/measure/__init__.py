"""Measurements, one concern per module: timing, memory, work (FLOPs and analytic memory),
environment capture and NVML device state. Nothing here imports torch or jax at import time.
"""
